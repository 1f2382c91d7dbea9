"""robench built-in plugin: datasets."""
