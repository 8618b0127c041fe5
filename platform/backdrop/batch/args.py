"""The command-line flags of the generation jobs, shared by ``jobs/catalog_backfill.py``,
``jobs/nightly_regen.py``, ``backdrop backfill`` and ``backdrop generate`` so that they cannot
drift apart, a ``--config`` file of the same fields, and the one job set-up (logging,
registry, Ray) they all do.

Importing this module imports neither Ray nor pyarrow, so building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from .. import config_files
from ..errors import InvalidParameterError
from ..runtime import COMPILE_MODES
from ..schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from ..settings import configure_logging


_FIELD = "b."  # the dest prefix of a flag that sets a BackfillConfig field
_BASE = "batch_base"  # the front door's own defaults (nightly: the champion), below a --config file


def _default(name: str) -> str:
    """A field's default as the help shows it: the dataclass is the one place it is declared."""
    from .config import BackfillConfig

    value = BackfillConfig.__dataclass_fields__[name].default
    return "none" if value is None else str(value)


def add_generation_arguments(p, **base) -> None:
    """The flags every generation job shares (backfill, nightly, ``backdrop backfill`` and
    ``generate``), ``--config FILE.yaml`` and ``key=value`` overrides. Each flag sets one
    :class:`~backdrop.batch.config.BackfillConfig` field and declares no default of its own;
    ``base``: this front door's defaults (e.g. ``model=``), which a ``--config`` file overrides."""
    p.set_defaults(**{_BASE: base})
    config_files.add_config_arguments(p, "a backfill config: any BackfillConfig field")

    def flag(*names, field, **kw):
        p.add_argument(*names, dest=_FIELD + field, default=argparse.SUPPRESS, **kw)

    flag("--model", field="model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a saved generator path"
         + (f" (default {base['model']})" if "model" in base else ""))
    flag("--catalog", field="catalog", help="catalog Parquet file, directory or s3:// prefix")
    flag("--output", field="output", help="output directory or s3:// prefix (images + manifest)")
    flag("--category", field="categories", action="append", help="only this category (repeatable)")
    flag("--steps", field="steps", type=int, help=f"denoising steps (default {_default('steps')})")
    flag("--scheduler", field="scheduler", choices=list(SCHEDULERS),
         help=f"denoising scheduler (default: the model's own, {DEFAULT_SCHEDULER} unless saved otherwise; dpm++ and "
              "unipc need fewer steps, see the README)")
    flag("--guidance", field="guidance", type=float, help=f"classifier-free guidance (default {_default('guidance')})")
    flag("--seed", field="seed", type=int, help="base seed; each product's seed derives from it")
    flag("--batch-size", field="batch_size", type=int,
         help=f"rows per generator call and manifest part (default {_default('batch_size')})")
    flag("--concurrency", field="concurrency", type=int, help="generator actors (the pool scales 1..N)")
    flag("--num-gpus", field="num_gpus", type=float, help="GPUs per generator actor (0: CPU, the default)")
    flag("--cpus-per-actor", field="cpus_per_actor", type=float,
         help="CPUs reserved per actor (default 0.5 on <= 4 CPUs, else 1)")
    flag("--compile", field="compile", choices=COMPILE_MODES,
         help="torch.compile the networks (CUDA graphs on a GPU), warmed up at actor start; auto: on CUDA only "
              "(default)")
    flag("--batch-bucket", field="batch_bucket", type=int,
         help="rows per denoising loop, padded: a row's pixels never depend on its batch mates "
              "(default 8 on CUDA, 4 on a CPU)")
    flag("--threads-per-actor", field="threads_per_actor", type=int,
         help="torch threads for CPU inference (default cores/actors)")
    flag("--image-format", "--format", field="image_format", choices=["png", "jpeg", "webp"],
         help="how the output images are encoded (png: lossless, the default; --format is the old name)")
    flag("--quality", field="quality", type=int, help=f"JPEG/WebP quality 1..100 (default {_default('quality')})")
    flag("--limit", field="limit", type=int, help="only the first N rows (after --category) in catalog order")
    flag("--wait-for-lease", field="lease_wait_s", type=float, metavar="SECONDS",
         help="when another run holds the output, wait up to this long for it (default: refuse)")
    flag("--lease-ttl", field="lease_ttl_s", type=float, metavar="SECONDS",
         help=f"the output lease's expiry without a heartbeat (default {_default('lease_ttl_s')}; a killed run's "
              "lease is free after it)")
    flag("--placements", field="placements", metavar="LIST", type=lambda text: [x for x in text.split(",") if x.strip()],
         help="ad placements, one output per product and placement: ratios and pixel slots, "
              "e.g. 1:1,4:5,16:9,9:16 or 300x250 (default: the product photo as it is)")
    flag("--candidates", field="candidates", type=int,
         help="best-of-N: generate N candidates per output and keep the one the model's QA "
              "scorer rates best (N > 1 needs a scorer: backdrop qa-fit)")
    flag("--qa-threshold", field="qa_threshold", type=float,
         help="outputs whose qa_score is below this are flagged for review (default: the scorer's own)")
    flag("--price-per-device-hour", field="price_per_device_hour", type=float, metavar="PRICE",
         help="price of one device-hour for the cost estimate (default 0: device-seconds only)")
    flag("--allow-inputs", field="allow_inputs", action="append", metavar="PREFIX",
         help="also read catalog inputs under this s3://bucket[/prefix] or absolute folder "
              "(repeatable; always allowed: the catalog's own bucket, or its folder)")
    flag("--max-failure-rate", field="max_failure_rate", type=float,
         help=f"exit non-zero when more than this fraction of rows failed (default {_default('max_failure_rate')})")
    flag("--executor", field="executor", choices=["ray", "local"],
         help="ray: Ray Data stages and an actor pool; local: the same stages in this process, no Ray "
              f"(default {base.get('executor', _default('executor'))})")
    # how the job reaches its services: not part of what it generates
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
                                          "else SQLite under $BACKDROP_HOME/mlflow)")
    p.add_argument("--ray-address", help="Ray cluster to join ('local' starts a private one; default: "
                                         "$RAY_ADDRESS, then the latest `ray start`, else a new local one)")
    p.add_argument("--num-cpus", type=float, help="CPUs of a private local Ray instance (--ray-address local)")


def config_from_args(args, **overrides):
    """The :class:`~backdrop.batch.config.BackfillConfig` that parsed arguments describe: its
    defaults, the front door's, ``--config``, the flags given, ``key=value``, then ``overrides``
    (what the front door itself fixes, e.g. ``kind``). A key, type or missing field the config
    cannot take is an ``InvalidParameterError`` naming it."""
    from .config import BackfillConfig

    try:
        config = config_files.resolve(args, BackfillConfig, _FIELD, base=getattr(args, _BASE, None))
    except ValueError as e:
        raise InvalidParameterError(str(e)) from None
    return replace(config, **overrides)


def start_job(args, start_ray: bool = True, **overrides):
    """The job's config (:func:`config_from_args`: a bad one raises before anything starts),
    then logging, the tracking URI and Ray for its executor, in that order (workers inherit
    the URI)."""
    config = config_from_args(args, **overrides)
    prepare_job(args, config, start_ray)
    return config


def prepare_job(args, config, start_ray: bool = True) -> None:
    configure_logging()
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if start_ray and config.executor == "ray":
        from ..cluster import init_ray

        init_ray(args.ray_address, args.num_cpus)


BUSY_EXIT = 75  # EX_TEMPFAIL: try again later
LOST_EXIT = 76  # the run stalled past its lease and another run took the output over


CONFIG_EXIT = 2  # what argparse exits with for a bad flag


def run_job(run, *args, **kwargs) -> int:
    """Call a job's ``run_*`` and return its exit code; a config the job cannot take is a
    one-line refusal (exit 2), an output held by another live run is one naming the holder
    (exit 75), and a run that lost its lease to another one says so, naming it (exit 76), not
    a traceback."""
    import sys

    from ..errors import LeaseLostError, OutputBusyError

    try:
        return run(*args, **kwargs)
    except InvalidParameterError as e:
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        return CONFIG_EXIT
    except OutputBusyError as e:
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        return BUSY_EXIT
    except LeaseLostError as e:
        print(f"error: {e.message}; this run wrote nothing more", file=sys.stderr, flush=True)
        return LOST_EXIT
