"""Train the generator on Ray Train and register it in MLflow.

    ray job submit --working-dir . -- python jobs/train.py --catalog runs/catalog/train.parquet \
        --storage-path /tmp/backdrop-ckpt --stages cg,pg --init models:/backdrop@champion \
        --minutes cg=10,pg=3 --num-workers 2

Runs against the cluster in RAY_ADDRESS (set by ``ray job submit``) or starts a local Ray.
A rerun with the same --storage-path and --name resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402,F401

from backdrop.training import parse_budgets  # noqa: E402
from backdrop.cluster import init_ray  # noqa: E402
from backdrop.settings import configure_logging  # noqa: E402
from backdrop.training.distributed import DistributedTrainConfig, train_distributed  # noqa: E402


def parse_args(argv=None) -> DistributedTrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", required=True, help="training catalog Parquet (local or s3://)")
    p.add_argument("--storage-path", required=True, help="checkpoint location (local or s3://)")
    p.add_argument("--name", default="backdrop-train", help="run name; same name + storage path resumes")
    p.add_argument("--stages", default="vae,base,cg,pg")
    p.add_argument("--minutes", default="", help="per-stage wall-clock budget, e.g. cg=10,pg=3")
    p.add_argument("--steps", default="", help="per-stage step budget, e.g. cg=2000")
    p.add_argument("--init", help="starting generator: path or models:/NAME@ALIAS (default: fresh tiny preset)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                   help="with --use-gpu: frozen networks in this dtype, trained weights in fp32")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory, ~1/3 more compute")
    p.add_argument("--learning-rate", default="", help="per stage, e.g. cg=1e-5 (default: the model preset's)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--placement-strategy", default="PACK", choices=["PACK", "SPREAD", "STRICT_SPREAD"])
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--log-images-every", type=int, default=200)
    p.add_argument("--registered-model-name", default="backdrop", help="'' to skip registration")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        return DistributedTrainConfig(
            catalog=a.catalog, storage_path=a.storage_path, name=a.name,
            stages=tuple(s for s in a.stages.split(",") if s), minutes=parse_budgets(a.minutes),
            steps={k: int(v) for k, v in parse_budgets(a.steps).items()}, init=a.init, resolution=a.resolution,
            batch_size=a.batch_size, grad_accum=a.grad_accum, mixed_precision=a.mixed_precision,
            gradient_checkpointing=a.gradient_checkpointing,
            learning_rates=parse_budgets(a.learning_rate, "learning rate"),
            num_workers=a.num_workers, use_gpu=a.use_gpu, cpus_per_worker=a.cpus_per_worker,
            placement_strategy=a.placement_strategy, max_failures=a.max_failures,
            checkpoint_every=a.checkpoint_every, log_images_every=a.log_images_every,
            registered_model_name=a.registered_model_name or None, seed=a.seed,
        )
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
