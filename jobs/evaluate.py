"""Evaluate a generator on the held-out split and reference pairs; log and record the numbers.

    python jobs/evaluate.py --model models:/backdrop/3 --catalog-dir runs/catalog

Writes a Markdown + JSON table, logs metrics and sample grids to an MLflow run, and (for a
registered version) records ``eval.*`` tags on the version, which the promotion gate reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402,F401

from backdrop import registry, runtime, storage  # noqa: E402
from backdrop.quality.evaluation import EvalConfig, evaluate  # noqa: E402
from backdrop.settings import configure_logging  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a path")
    p.add_argument("--catalog-dir", required=True, help="directory with train/heldout/pairs.parquet")
    p.add_argument("--steps", type=int, default=EvalConfig.steps)
    p.add_argument("--guidance", type=float, default=EvalConfig.guidance)
    p.add_argument("--per-category", type=int, default=EvalConfig.per_category)
    p.add_argument("--pairs", type=int, default=EvalConfig.pairs)
    p.add_argument("--no-references", action="store_true", help="skip the PG / reference metrics")
    p.add_argument("--clip-model", help="CLIP vision model dir (local or s3://) for CLIP similarity and FID")
    p.add_argument("--output", help="write <output>.md and <output>.json")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--run-name", default="evaluate")
    a = p.parse_args(argv)
    configure_logging()

    resolved = registry.resolve(a.model)
    model = runtime.load(resolved.path, device="cpu").model
    catalog = {k: storage.join(a.catalog_dir, f"{k}.parquet") for k in ("train", "heldout", "pairs")}
    cfg = EvalConfig(steps=a.steps, guidance=a.guidance, per_category=a.per_category, pairs=a.pairs,
                     clip_model=a.clip_model)
    result = evaluate(model, catalog, cfg, with_references=not a.no_references)
    about = {"model": a.model, "name": resolved.name, "version": resolved.version}
    report = result.report(**about)
    print(result.table())
    print(json.dumps({"per_category": result.per_category}))
    if a.output:
        result.save(a.output, f"Evaluation of `{a.model}` (version {resolved.version})", **about)
    if not a.no_mlflow:
        import mlflow

        registry.configure()
        with mlflow.start_run(experiment_id=registry.ensure_experiment(), run_name=a.run_name):
            mlflow.set_tags({"model_name": resolved.name, "model_version": resolved.version, "job": "evaluate"})
            mlflow.log_params({k: v for k, v in vars(a).items() if v is not None})
            registry.log_evaluation(result.numbers(), result.grids, report)
        if a.model.startswith("models:/"):
            registry.record_metrics(resolved.name, resolved.version, result.numbers())
    return 0


if __name__ == "__main__":
    sys.exit(main())
