"""Evaluate a generator on the held-out split and reference pairs; log and record the numbers.

    python jobs/evaluate.py --model models:/backdrop/3 --catalog-dir runs/catalog
    python jobs/evaluate.py --config recipes/evaluate/held-out.yaml model=models:/backdrop/3 catalog_dir=runs/catalog

Writes a Markdown + JSON table, logs metrics, sample grids and the resolved config to an MLflow
run, and (for a registered version) records ``eval.*`` tags on the version, which the
promotion gate reads. Every flag is a field of ``quality.evaluation.EvaluateJob``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402,F401

from backdrop import config_files  # noqa: E402
from backdrop.quality.evaluation import EvaluateJob, run_evaluation  # noqa: E402
from backdrop.settings import configure_logging  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_files.add_arguments(p, EvaluateJob, what="an evaluation config file")
    args = p.parse_args(argv)
    try:
        job = config_files.resolve(args, EvaluateJob)
    except ValueError as e:
        p.error(str(e))
    configure_logging()
    run_evaluation(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
