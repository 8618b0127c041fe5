"""One MLflow run per training, whichever trainer ran it.

``backdrop train`` (the README's documented adaptation) and the Ray Train job
(``training.distributed``) both end in :func:`record_generator`: the saved generator logged as
an artifact of the run (an MLflow pyfunc model) with its lineage (data fingerprint, code
revision, preset, stages, starting model) and, when asked, registered as a new version. The
single-process trainer logs its loss curves through :func:`training_run`; the Ray workers log
theirs from rank 0 into the driver's run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager
from typing import Callable, Iterator

from .. import registry
from ..pyfunc import log_generator

CURVES = ("loss", "lr", "samples_per_s")  # what a step's log record adds to the run, per stage


def data_fingerprint(catalog: str) -> str:
    """A hash of the catalog's rows (ids, categories, URIs): which data a version was trained on."""
    from ..catalog import read_catalog

    t = read_catalog(catalog, columns=["product_id", "category", "image_uri", "mask_uri"])
    h = hashlib.sha256()
    for col in t.column_names:
        h.update("\x1f".join(map(str, t.column(col).to_pylist())).encode())
    return h.hexdigest()[:16]


def code_revision() -> str:
    if os.environ.get("BACKDROP_CODE_REVISION"):
        return os.environ["BACKDROP_CODE_REVISION"]
    try:
        here = os.path.dirname(__file__)
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return rev.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def training_run(name: str, config: dict, experiment: str | None = None) -> Iterator[Callable[[dict], None]]:
    """An active MLflow run with ``config`` (the resolved training configuration) as its params;
    yields the ``on_log`` callback that turns each step record into ``<stage>/<curve>`` metrics."""
    import mlflow

    registry.configure()
    with mlflow.start_run(experiment_id=registry.ensure_experiment(experiment or registry.DEFAULT_EXPERIMENT),
                          run_name=name):
        mlflow.set_tags({"job": "train"})
        mlflow.log_params({k: str(v)[:500] for k, v in config.items() if v is not None})

        def on_log(record: dict) -> None:
            mlflow.log_metrics({f"{record['stage']}/{k}": float(record[k]) for k in CURVES if k in record},
                               step=int(record["step"]))

        yield on_log


def record_generator(model, catalog: str, stages, run_name: str, *, register: str | None = None,
                     init: str | None = None):
    """Log ``model`` in the active run with its lineage; register a version when ``register``
    names the registered model. Returns the registered version (None without ``register``)."""
    import mlflow

    tags = {"data_fingerprint": data_fingerprint(catalog), "code_revision": code_revision(),
            "preset": model.config.preset, "stages": ",".join(stages), "train_run": run_name,
            "init": str(init or "fresh")}
    mlflow.set_tags(tags)
    return log_generator(model, registered_model_name=register, tags=tags)
