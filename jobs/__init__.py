"""Ray job entrypoints: thin argument parsing over library calls (run as scripts: python jobs/X.py)."""
