"""Where backdrop keeps its state and which environment it passes on: one place for both.

Every job, the CLI and the Serve app read ``BACKDROP_HOME`` and the tracking URI through
here, so a registry adapter, a Ray launcher and a test fixture cannot disagree about where
the embedded MLflow store lives. Nothing here imports MLflow, Ray or torch.
"""

from __future__ import annotations

import logging
import os
import sys

# S3-compatible endpoints, in the order they are honoured (storage reads the same tuple).
ENDPOINT_ENV_VARS = ("BACKDROP_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

# The settings backdrop reads from the environment: a script that starts or joins a cluster
# passes them on to its workers (a submitted job gets them from its runtime env instead).
# Never a secret: Ray keeps a runtime env in its job metadata and shows it on the dashboard, so
# credentials reach workers from the node's own environment or a mounted secret file (MLflow
# reads ~/.mlflow/credentials; AWS its shared credentials file), never through Ray.
FORWARDED_ENV = ("BACKDROP_HOME", "MLFLOW_TRACKING_URI", "BACKDROP_MLFLOW_ARTIFACT_ROOT",
                 *ENDPOINT_ENV_VARS, "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


NOISY_LOGGERS = ("httpx", "urllib3", "botocore", "s3fs", "fsspec", "alembic")


def backdrop_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("BACKDROP_HOME", "~/.backdrop")))


def embedded_tracking_uri() -> str:
    """The default MLflow store: SQLite under ``$BACKDROP_HOME/mlflow``."""
    return f"sqlite:///{os.path.join(backdrop_home(), 'mlflow', 'mlflow.db')}"


# mlflow.set_tracking_uri() also exports the URI as $MLFLOW_TRACKING_URI (mlflow 3), so after
# the registry configures the client the variable is set in this process even when nobody
# asked for a server: embedded URIs exported that way are remembered so they are not
# mistaken for a user's choice.
exported_embedded: set[str] = set()


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when a user set it, else the embedded store (created on demand)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env not in exported_embedded:
        return env
    os.makedirs(os.path.join(backdrop_home(), "mlflow"), exist_ok=True)
    return embedded_tracking_uri()


def forwarded_env() -> dict[str, str]:
    """The environment a launched cluster's workers need (``BACKDROP_HOME`` always resolved)."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    return {**env, "BACKDROP_HOME": backdrop_home()}


MODEL_CACHE_BYTES_ENV = "BACKDROP_MODEL_CACHE_BYTES"
DEFAULT_MODEL_CACHE_BYTES = 20 * 2**30  # an SD-size generator is ~5 GB: a few versions per node


ALLOW_INPUTS_ENV = "BACKDROP_ALLOW_INPUTS"


def allowed_inputs() -> tuple[str, ...]:
    """Input prefixes every batch job of this deployment may read besides its catalog's own
    bucket or folder (comma-separated ``s3://bucket[/prefix]`` and absolute folders), on top of
    a job's ``--allow-inputs``: e.g. the bucket where a retailer's photos live."""
    return tuple(p.strip() for p in os.environ.get(ALLOW_INPUTS_ENV, "").split(",") if p.strip())


def model_cache_bytes() -> int:
    """How much the local copies of registered versions may take before the least recently used
    are deleted (``$BACKDROP_MODEL_CACHE_BYTES``)."""
    raw = os.environ.get(MODEL_CACHE_BYTES_ENV, "").strip()
    return int(raw) if raw else DEFAULT_MODEL_CACHE_BYTES


def use_compile_cache() -> str:
    """Keep torch.compile's kernels (inductor's FX graph cache) on local disk under
    ``$BACKDROP_HOME/compile-cache``, so a restarted replica or actor loads them instead of
    compiling again. An explicit ``TORCHINDUCTOR_CACHE_DIR`` wins."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(backdrop_home(), "compile-cache"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.makedirs(os.environ["TORCHINDUCTOR_CACHE_DIR"], exist_ok=True)
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def configure_logging(verbose: bool = False) -> None:
    """The one logging set-up of every front door (jobs, CLI): stderr, timestamps, quiet clients."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
