"""robench built-in plugin: executors."""
