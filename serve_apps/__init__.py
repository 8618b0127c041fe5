"""Ray Serve applications over the backdrop library (``serve run serve_apps/config.yaml``)."""
