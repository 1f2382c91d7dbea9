"""robench built-in plugin: gradient reversal (DANN), CORAL, and the DANN paper's digit CNN."""
