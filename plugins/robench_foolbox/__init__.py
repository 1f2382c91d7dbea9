"""robench built-in plugin: foolbox."""
