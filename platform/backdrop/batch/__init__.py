"""Catalog generation jobs: the backfill, the nightly regeneration, and their manifest.

    config    BackfillConfig, RowSelection: what a run is asked to do
    plan      classify catalog rows against the manifest (new / failed / moved / done)
    records   one row's load -> generate -> write, and the manifest record it becomes
    stages    the same stages on Ray Data (actor pool) or in this process
    manifest  append-only parts, consolidation, the latest record per product
    run       the driver: plan, execute, tally, consolidate, MLflow run
    nightly   regenerate what changed, one backfill per model version
    args      the shared command-line flags and job set-up

Importing the package imports nothing heavy; Ray is imported only where a stage runs on it.
"""
