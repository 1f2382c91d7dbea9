"""An example robench plugin package, written only against robench's public contract."""
