"""The command-line flags of the generation jobs, shared by ``jobs/catalog_backfill.py``,
``jobs/nightly_regen.py``, ``backdrop backfill`` and ``backdrop generate`` so that they cannot
drift apart, and the one job set-up (logging, registry, Ray) they all do.

Importing this module imports neither Ray nor pyarrow, so building the CLI parser stays fast.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..runtime import COMPILE_MODES
from ..schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from ..settings import configure_logging


def add_generation_arguments(p) -> None:
    """The flags every generation job shares (backfill, nightly, ``backdrop backfill``)."""
    p.add_argument("--catalog", required=True, help="catalog Parquet file, directory or s3:// prefix")
    p.add_argument("--output", required=True, help="output directory or s3:// prefix (images + manifest)")
    p.add_argument("--category", action="append", default=[], help="only this category (repeatable)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=list(SCHEDULERS),
                   help="denoising scheduler (default ddim; dpm++ and unipc need fewer steps, see the README)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance (default 2.0)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each product's seed derives from it")
    p.add_argument("--batch-size", type=int, default=16, help="rows per generator call and manifest part")
    p.add_argument("--concurrency", type=int, default=1, help="generator actors (the pool scales 1..N)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per generator actor (0: CPU)")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs reserved per actor (default 0.5 on <= 4 CPUs, else 1)")
    p.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                   help="torch.compile the networks (CUDA graphs on a GPU), warmed up at actor start; "
                        "auto: on CUDA only (default)")
    p.add_argument("--batch-bucket", type=int,
                   help="rows per denoising loop, padded: a row's pixels never depend on its batch mates "
                        "(default 8 on CUDA, 4 on a CPU)")
    p.add_argument("--threads-per-actor", type=int, help="torch threads for CPU inference (default cores/actors)")
    p.add_argument("--image-format", "--format", dest="format", default="png", choices=["png", "jpeg", "webp"],
                   help="how the output images are encoded (png: lossless, the default; --format is the old name)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality 1..100")
    p.add_argument("--limit", type=int, help="only the first N rows (after --category) in catalog order")
    p.add_argument("--wait-for-lease", type=float, default=0.0, metavar="SECONDS",
                   help="when another run holds the output, wait up to this long for it (default: refuse)")
    p.add_argument("--lease-ttl", type=float, default=60.0, metavar="SECONDS",
                   help="the output lease's expiry without a heartbeat (a killed run's lease is free after it)")
    p.add_argument("--placements", default="", metavar="LIST",
                   help="ad placements, one output per product and placement: ratios and pixel slots, "
                        "e.g. 1:1,4:5,16:9,9:16 or 300x250 (default: the product photo as it is)")
    p.add_argument("--candidates", type=int, default=1,
                   help="best-of-N: generate N candidates per output and keep the one the model's QA "
                        "scorer rates best (N > 1 needs a scorer: backdrop qa-fit)")
    p.add_argument("--qa-threshold", type=float,
                   help="outputs whose qa_score is below this are flagged for review (default: the scorer's own)")
    p.add_argument("--price-per-device-hour", type=float, default=0.0, metavar="PRICE",
                   help="price of one device-hour for the cost estimate (default 0: device-seconds only)")
    p.add_argument("--allow-inputs", action="append", default=[], metavar="PREFIX",
                   help="also read catalog inputs under this s3://bucket[/prefix] or absolute folder "
                        "(repeatable; always allowed: the catalog's own bucket, or its folder)")
    p.add_argument("--max-failure-rate", type=float, default=0.1,
                   help="exit non-zero when more than this fraction of rows failed (default 0.1)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
                                          "else SQLite under $BACKDROP_HOME/mlflow)")
    p.add_argument("--executor", default="ray", choices=["ray", "local"],
                   help="ray: Ray Data stages and an actor pool (default); local: the same stages in this "
                        "process, no Ray (what `backdrop generate` runs)")
    p.add_argument("--ray-address", help="Ray cluster to join ('local' starts a private one; default: "
                                         "$RAY_ADDRESS, then the latest `ray start`, else a new local one)")
    p.add_argument("--num-cpus", type=float, help="CPUs of a private local Ray instance (--ray-address local)")


def config_from_args(args, **overrides):
    """The :class:`~backdrop.batch.config.BackfillConfig` that parsed flags describe."""
    from .config import BackfillConfig

    config = BackfillConfig(
        catalog=args.catalog, model=args.model, output=args.output, categories=tuple(args.category),
        steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, seed=args.seed, batch_size=args.batch_size,
        concurrency=args.concurrency, num_gpus=args.num_gpus, cpus_per_actor=args.cpus_per_actor,
        threads_per_actor=args.threads_per_actor, compile=args.compile, batch_bucket=args.batch_bucket,
        image_format=args.format, quality=args.quality,
        limit=args.limit, max_failure_rate=args.max_failure_rate,
        lease_wait_s=args.wait_for_lease, lease_ttl_s=args.lease_ttl,
        placements=tuple(p for p in args.placements.split(",") if p.strip()), candidates=args.candidates,
        qa_threshold=args.qa_threshold, price_per_device_hour=args.price_per_device_hour,
        executor=args.executor, allow_inputs=tuple(args.allow_inputs),
    )
    return replace(config, **overrides)


def prepare_job(args, start_ray: bool = True) -> None:
    """Logging, the tracking URI and Ray, in that order (workers inherit the URI)."""
    configure_logging()
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if start_ray and args.executor == "ray":
        from ..cluster import init_ray

        init_ray(args.ray_address, args.num_cpus)


BUSY_EXIT = 75  # EX_TEMPFAIL: try again later
LOST_EXIT = 76  # the run stalled past its lease and another run took the output over


def run_job(run, *args, **kwargs) -> int:
    """Call a job's ``run_*`` and return its exit code; an output held by another live run is a
    one-line refusal naming the holder (exit 75), and a run that lost its lease to another one
    says so, naming it (exit 76), not a traceback."""
    import sys

    from ..errors import LeaseLostError, OutputBusyError

    try:
        return run(*args, **kwargs)
    except OutputBusyError as e:
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        return BUSY_EXIT
    except LeaseLostError as e:
        print(f"error: {e.message}; this run wrote nothing more", file=sys.stderr, flush=True)
        return LOST_EXIT
