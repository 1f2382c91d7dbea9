"""robench built-in plugin: timm."""
