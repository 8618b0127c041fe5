"""One MLflow run per backfill: parameters and lineage up front; metrics, the summary, the
review gallery and per-category contact sheets at the end."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .. import config_files, registry, storage
from .config import BackfillConfig
from .manifest import Target
from .records import OK
from .result import BackfillResult

log = logging.getLogger(__name__)

SHEET_IMAGES = 8



@contextmanager
def tracking_run(config: BackfillConfig, model, target: Target) -> Iterator[str]:
    """One MLflow run per backfill: parameters and lineage up front, outcomes at the end."""
    import mlflow

    experiment_id = registry.ensure_experiment(config.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{config.kind}-{model.name}-v{model.version}") as run:
        mlflow.set_tags({"backdrop.kind": config.kind, "backdrop.model_name": model.name,
                         "backdrop.model_version": str(model.version), "backdrop.model_ref": config.model,
                         "backdrop.catalog": config.catalog, "backdrop.output": config.output})
        params = {k: v for k, v in asdict(config).items() if k not in ("experiment", "kind")}
        params.update(model_name=model.name, model_version=model.version, params_hash=target.params_hash)
        mlflow.log_params({k: ",".join(v) if isinstance(v, tuple) else v for k, v in params.items()})
        # the resolved config, as a file the job takes back: --config config.yaml reruns it as it was
        mlflow.log_text(config_files.to_yaml(config), "config.yaml")
        yield run.info.run_id


def log_outcome(result: BackfillResult, final: pa.Table, staging: str | None = None) -> None:
    import tempfile

    import mlflow

    from .review import REVIEW_DIR, write_review

    mlflow.log_metrics(result.metrics())
    mlflow.log_dict(result.as_dict(), "summary.json")
    with tempfile.TemporaryDirectory() as tmp:
        if write_review(result.config.output, final, staging, tmp) or os.listdir(tmp):
            mlflow.log_artifacts(tmp, REVIEW_DIR)
    for category, sheet in category_sheets(final, result.plan.categories).items():
        mlflow.log_image(sheet, f"gallery/{category}.png")


def category_sheets(records: pa.Table, categories: list[str], per_category: int = SHEET_IMAGES) -> dict:
    """One contact sheet per category from the manifest's ok rows (a gallery of the output)."""
    from ..gallery import contact_sheet
    from ..imaging import decode_image

    ok = records.filter(pc.equal(records["status"], OK))
    sheets = {}
    for category in categories:
        images = []
        for uri in ok.filter(pc.equal(ok["category"], category))["output_uri"][:per_category].to_pylist():
            try:
                images.append(decode_image(storage.read_bytes(uri)))
            except Exception as e:  # noqa: BLE001 - a gallery is best effort
                log.warning("gallery: cannot read %s: %s", uri, e)
        if images:
            sheets[category] = contact_sheet([images], row_labels=[category])
    return sheets
