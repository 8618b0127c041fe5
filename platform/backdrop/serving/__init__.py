"""The HTTP service's logic, without HTTP or Ray (``serve_apps/app.py`` is the glue).

    params   the request's generation parameters, parsed and range-checked
    auth     API keys, held as SHA-256 digests
    models   which registry version a request gets (alias, version, default)
    jobs     a validated request, and batches of them through the generation runtime
"""
