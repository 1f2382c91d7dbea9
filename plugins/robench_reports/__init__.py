"""robench built-in plugin: reports."""
