"""Nightly category-wide regeneration: only new products, failed rows, and categories whose model moved.

    python jobs/nightly_regen.py --catalog s3://bucket/catalog/ --output s3://bucket/backfill/ \\
        --model models:/backdrop@champion --pin mug=models:/backdrop/3 --dry-run
    python jobs/nightly_regen.py --config recipes/generate/nightly.yaml catalog=s3://bucket/catalog/ \\
        output=s3://bucket/backfill/

``--dry-run`` prints the plan (rows per category and reason) and touches nothing. Without it,
one backfill runs per model version with work to do. Scheduled on Kubernetes by
``infra/nightly-cronjob.yaml``; submit it like ``jobs/catalog_backfill.py`` otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402,F401  (backdrop importable from a bare checkout)

from backdrop.batch import args as batch_args  # noqa: E402
from backdrop.batch import nightly  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pin", action="append", default=[], metavar="CATEGORY=MODEL_REF",
                   help="serve a category with a fixed model, e.g. mug=models:/backdrop/3 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    batch_args.add_generation_arguments(p, model="models:/backdrop@champion")  # the champion alias
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return batch_args.run_job(lambda: nightly.exit_code(nightly.run_nightly(
        batch_args.start_job(args, start_ray=not args.dry_run), nightly.parse_pins(args.pin), dry_run=args.dry_run)[1]))


if __name__ == "__main__":
    sys.exit(main())
