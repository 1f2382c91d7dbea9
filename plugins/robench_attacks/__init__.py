"""robench built-in plugin: attacks."""
