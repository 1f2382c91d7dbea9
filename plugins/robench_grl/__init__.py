"""robench built-in plugin: grl."""
