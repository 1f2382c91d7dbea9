"""robench built-in plugin: heads."""
