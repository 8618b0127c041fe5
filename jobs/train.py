"""Train the generator on Ray Train and register it in MLflow.

    ray job submit --working-dir . -- python jobs/train.py --catalog runs/catalog/train.parquet \
        --storage-path /tmp/backdrop-ckpt --stages cg,pg --init models:/backdrop@champion \
        --minutes cg=10,pg=3 --num-workers 2
    ray job submit --working-dir . -- python jobs/train.py --config recipes/adapt.yaml \
        catalog=s3://bucket/train.parquet storage_path=s3://bucket/ckpt num_workers=4 use_gpu=true

The flags and keys are the recipe's (``backdrop.training.recipe.DistributedRecipe``: every
``backdrop train`` knob plus the cluster's). Runs against the cluster in RAY_ADDRESS (set by
``ray job submit``) or starts a local Ray. A rerun with the same --storage-path and
--run-name resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402,F401

from backdrop.training import recipe as recipes  # noqa: E402
from backdrop.cluster import init_ray  # noqa: E402
from backdrop.settings import configure_logging  # noqa: E402
from backdrop.training.distributed import DistributedTrainConfig, train_distributed  # noqa: E402


def parse_args(argv=None) -> DistributedTrainConfig:
    """The flags are the recipe's fields (``backdrop.training.recipe.DistributedRecipe``):
    ``--config recipes/X.yaml``, flags, then ``key=value`` overrides, as ``backdrop train``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipes.add_arguments(p, recipes.DistributedRecipe)
    try:
        return DistributedTrainConfig.from_recipe(recipes.resolve(p.parse_args(argv), recipes.DistributedRecipe))
    except ValueError as e:  # a flag that cannot be used: say which, no traceback
        p.error(str(e))


def main(argv=None) -> int:
    configure_logging()
    cfg = parse_args(argv)
    init_ray()  # joins RAY_ADDRESS (a submitted job) or starts a local Ray
    outcome = train_distributed(cfg)
    print(json.dumps({"checkpoint": outcome.checkpoint_path, "mlflow_run_id": outcome.run_id,
                      "registered_version": outcome.registered_version, "state": outcome.state}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
