"""The demo, apart from the core: the synthetic catalog, the main command's recipe, its galleries."""
