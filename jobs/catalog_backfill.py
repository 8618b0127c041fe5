"""Catalog backfill: one generated ad image + one manifest record per catalog row, on Ray Data.

On a cluster (the repo is the working directory; backdrop ships to the workers by itself)::

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"env_vars": {"BACKDROP_HOME": "/abs/path", "MLFLOW_TRACKING_URI": "..."}}' \\
        -- python jobs/catalog_backfill.py --catalog s3://bucket/catalog/ \\
           --model models:/backdrop@champion --output s3://bucket/backfill/ --num-gpus 1 --concurrency 4

On this machine (starts Ray, or joins the one `ray start` made)::

    python jobs/catalog_backfill.py --catalog runs/catalog/heldout.parquet \\
        --model models:/backdrop@champion --output runs/backfill

Every flag is a field of ``BackfillConfig``; a YAML file of those fields is taken with
``--config`` (e.g. ``recipes/generate/backfill.yaml``), and ``key=value`` pairs after the flags override
both (``steps=20 'placements=["1:1","16:9"]'``). The run's MLflow record holds the resolved
config as ``config.yaml``, which ``--config`` takes back.

A submitted job's environment is the Ray head's (what `ray start` was started with) plus its
runtime env's ``env_vars``: pass ``BACKDROP_HOME`` / ``MLFLOW_TRACKING_URI`` (the registry) and
``BACKDROP_S3_ENDPOINT_URL`` there unless the cluster already has them; its workers get the same.
A head made by Ray 2.60's ``ray start`` requires its auth token: ``export RAY_AUTH_MODE=token``
makes the CLI send ``~/.ray/auth_token``. The entrypoint's ``python`` is the first on the head's
PATH (start the head from the activated venv).

Rerunning the same command does no work for rows already done; after a crash it finishes the
rest. Exit status 1 when more than ``--max-failure-rate`` of the rows failed (each failure is a
manifest row with its reason).
"""

from __future__ import annotations

import argparse
import os
import sys

# The driver imports this checkout's backdrop (in a submitted job: the uploaded copy); the
# workers get the same package through the runtime env (cluster.init_ray).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402,F401

from backdrop.batch import args as batch_args  # noqa: E402
from backdrop.batch.run import run_backfill  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_args.add_generation_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return batch_args.run_job(lambda: run_backfill(batch_args.start_job(args)).exit_code())


if __name__ == "__main__":
    sys.exit(main())
