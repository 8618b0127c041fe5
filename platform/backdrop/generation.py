"""Catalog rows in, generated images and manifest records out: the stages of every generation job.

    load_item(row)                    fetch, decode, validate          CPU, no model
    generate_items(pipe, items, ...)  one denoising loop per batch     the model
    write_item(item, ctx)             encode, write atomically, record CPU, no model

The in-process loop (:func:`generate_rows` / :func:`generate_in_process`: the CLI, the demo,
the benchmark's bare baseline) chains the three in one process; the Ray Data backfill
(``backdrop.batch``) runs each as its own stage. There is one implementation of each stage.

A bad row becomes one ``failed`` record with its reason (``code: message``) and never takes
its batch mates down. Importing this module does not import torch, so the Ray CPU stages stay
light processes; only :func:`generate_items` needs the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
from PIL import Image

from . import imaging, storage
from .categories import CategoryMap
from .data.catalog import load_row
from .errors import InvalidInputError

if TYPE_CHECKING:
    from .pipeline import BackdropPipeline, GenerationRequest, InferenceConfig

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "product_id", "category", "status", "output_uri", "error", "model_name", "model_version",
    "params_hash", "seed", "created_at", "run_id",
)
OK, FAILED = "ok", "failed"
GENERATION_ERROR, WRITE_ERROR, LOAD_ERROR = "generation_error", "write_error", "load_error"


@dataclass(frozen=True)
class OutputConfig:
    image_format: str = "png"
    quality: int = 95

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "jpg": "jpg"}.get(self.image_format.lower(), self.image_format.lower())


def params_hash(inference: InferenceConfig, output: OutputConfig, seed: int, resolution: int) -> str:
    """Identifies everything besides the model version that decides an output's pixels."""
    blob = json.dumps({"inference": asdict(inference), "output": asdict(output), "seed": seed,
                       "resolution": resolution}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def row_seed(base_seed: int, product_id: str) -> int:
    """A stable per-product seed: reruns and resumes regenerate the same pixels."""
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{product_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def output_uri(output_root: str, row: dict, output: OutputConfig) -> str:
    return storage.join(output_root, "images", str(row["category"]), f"{row['product_id']}.{output.extension}")


@dataclass(frozen=True)
class ModelInfo:
    """What a job's driver needs to know about a generator without loading its networks."""

    resolution: int
    categories: CategoryMap


def read_model_info(model_path: str) -> ModelInfo:
    """Resolution and category map from a saved generator's ``backdrop.json``."""
    from .models.generator import CONFIG_NAME

    meta = json.loads(storage.read_bytes(storage.join(model_path, CONFIG_NAME)))
    return ModelInfo(int(meta["config"]["resolution"]), CategoryMap.from_json(json.dumps(meta["categories"])))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunContext:
    """What every record of one generation run shares (its lineage), and where outputs go.

    Holds no torch object, so it travels to the Ray CPU stages without importing the model code.
    """

    output_root: str
    model_name: str
    model_version: str
    params_hash: str
    seed: int = 0
    output: OutputConfig = OutputConfig()
    run_id: str | None = None

    @classmethod
    def create(cls, output_root: str, model_name: str, model_version: str, *, inference: InferenceConfig,
               output: OutputConfig = OutputConfig(), seed: int = 0, resolution: int,
               run_id: str | None = None) -> "RunContext":
        return cls(output_root, model_name, str(model_version), params_hash(inference, output, seed, resolution),
                   seed, output, run_id)

    def record(self, row: dict, status: str, uri: str | None = None, error: str | None = None) -> dict:
        return {
            "product_id": str(row["product_id"]),
            "category": str(row.get("category")),
            "status": status,
            "output_uri": uri,
            "error": error,
            "model_name": self.model_name,
            "model_version": str(self.model_version),
            "params_hash": self.params_hash,
            "seed": row_seed(self.seed, str(row["product_id"])),
            "created_at": datetime.now(timezone.utc).isoformat(),
            "run_id": self.run_id,
        }


# --------------------------------------------------------------------------- stage 1: load


@dataclass
class WorkItem:
    """One catalog row on its way through load -> generate -> write.

    ``error`` is set by the first stage that fails the row; later stages pass it through.
    """

    row: dict
    image: Image.Image | None = None
    mask: np.ndarray | None = None
    reference: Image.Image | None = None
    reference_mask: np.ndarray | None = None
    output: Image.Image | None = None  # the generated ad, product pixels pasted back
    error: str | None = None

    @property
    def product_id(self) -> str:
        return str(self.row["product_id"])

    @property
    def ready(self) -> bool:
        """Loaded, valid and not generated yet."""
        return self.error is None and self.image is not None and self.output is None

    def request(self, seed: int) -> GenerationRequest:
        from .pipeline import GenerationRequest

        return GenerationRequest(image=self.image, mask=self.mask, category=self.row["category"],
                                 reference=self.reference, reference_mask=self.reference_mask,
                                 prompt=self.row.get("prompt"), seed=seed)


def load_item(row: dict, categories: CategoryMap | None = None) -> WorkItem:
    """Fetch and validate one row; any failure is recorded on the item, never raised.

    With ``categories`` (the model's map) an unknown category fails before anything is fetched.
    """
    item = WorkItem(row)
    try:
        if categories is not None:
            categories.id_of(row["category"])
        _fetch_inputs(item)
    except InvalidInputError as e:
        item.error = str(e)
    except Exception as e:  # noqa: BLE001 - an unexpected failure is still this row's failure
        item.error = f"{LOAD_ERROR}: {type(e).__name__}: {e}"
    return item


def load_request(row: dict, seed: int) -> GenerationRequest:
    """Fetch and validate a catalog row as one request (raises ``InvalidInputError``)."""
    item = WorkItem(row)
    _fetch_inputs(item)
    return item.request(seed)


def _fetch_inputs(item: WorkItem) -> None:
    row = item.row
    item.image, item.mask = load_row(row["image_uri"], row.get("mask_uri"))
    if row.get("reference_uri"):
        item.reference, item.reference_mask = load_reference(row["reference_uri"], row.get("reference_mask_uri"))


def load_reference(uri: str, mask_uri: str | None):
    """Fetch a reference ad and its product mask (``None``: the whole reference is background)."""
    return imaging.load_reference(storage.read_bytes(uri), storage.read_bytes(mask_uri) if mask_uri else None)


# --------------------------------------------------------------------------- stage 2: generate


def generate_items(pipe: BackdropPipeline, items: list[WorkItem], inference: InferenceConfig, seed: int) -> int:
    """Generate every ready item of a batch in one denoising loop; returns how many were sent.

    Rows are grouped by category, so each category's prompts are encoded once (the pipeline
    caches embeddings across batches too). Rows without a reference run CG alone; the
    pipeline applies PG only to rows that have one. If the batch fails as a whole it is
    retried row by row, so only the culprit fails.
    """
    ready = sorted((it for it in items if it.ready), key=lambda it: str(it.row["category"]))
    if not ready:
        return 0
    requests = [it.request(row_seed(seed, it.product_id)) for it in ready]
    for item, image in zip(ready, _generate_isolating_failures(pipe, requests, inference)):
        if isinstance(image, Exception):
            item.error = f"{GENERATION_ERROR}: {type(image).__name__}: {image}"
        else:
            item.output = image
    return len(ready)


def _generate_isolating_failures(pipe, requests, inference) -> list[Image.Image | Exception]:
    try:
        return pipe(requests, inference)
    except Exception as batch_error:  # noqa: BLE001
        if len(requests) == 1:
            return [batch_error]
        log.warning("batch of %d failed (%s); retrying row by row", len(requests), batch_error)
        out: list = []
        for r in requests:
            try:
                out.extend(pipe([r], inference))
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out


# --------------------------------------------------------------------------- stage 3: write


def write_item(item: WorkItem, ctx: RunContext) -> dict:
    """Encode and write the item's image atomically, then return its manifest record.

    A record says ``ok`` only once its image is complete at ``output_uri``.
    """
    if item.error is not None:
        return ctx.record(item.row, FAILED, error=item.error)
    if item.output is None:
        return ctx.record(item.row, FAILED, error=f"{GENERATION_ERROR}: the row was never generated")
    uri = output_uri(ctx.output_root, item.row, ctx.output)
    try:
        storage.write_bytes(uri, imaging.encode_image(item.output, ctx.output.image_format, ctx.output.quality))
    except Exception as e:  # noqa: BLE001 - a write failure is this row's failure
        return ctx.record(item.row, FAILED, error=f"{WRITE_ERROR}: {type(e).__name__}: {e}")
    return ctx.record(item.row, OK, uri=uri)


def failed_stage(error: str | None) -> str | None:
    """Which stage produced a record's error: ``load``, ``generate`` or ``write``."""
    if not error:
        return None
    code = error.split(":", 1)[0]
    return {GENERATION_ERROR: "generate", WRITE_ERROR: "write"}.get(code, "load")


# --------------------------------------------------------------------------- the in-process loop


def generate_rows(pipe: BackdropPipeline, rows: list[dict], ctx: RunContext, inference: InferenceConfig) -> list[dict]:
    """load -> generate -> write for one batch in this process; one record per row, in order."""
    items = [load_item(row, pipe.model.categories) for row in rows]
    generate_items(pipe, items, inference, ctx.seed)
    return [write_item(item, ctx) for item in items]


def generate_in_process(pipe: BackdropPipeline, rows: Iterable[dict], ctx: RunContext,
                        inference: InferenceConfig, batch_size: int = 16) -> Iterator[list[dict]]:
    """The bare loop over a catalog, one batch at a time; yields each batch's records."""
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield generate_rows(pipe, batch, ctx, inference)
            batch = []
    if batch:
        yield generate_rows(pipe, batch, ctx, inference)
