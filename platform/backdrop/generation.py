"""Catalog rows in, generated images and manifest records out (no Ray here).

The same functions serve the in-process loop (CLI, demo, the benchmark's bare baseline) and
the Ray Data backfill's actors: a row is loaded and validated on its own, so one bad row
becomes one ``failed`` record with its reason and never takes its batch mates down.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from PIL import Image

from . import storage
from .data.catalog import load_row
from .errors import EmptyMaskError, InvalidInputError
from .imaging import decode_image, decode_mask, encode_image, mask_from_alpha, validate_mask
from .pipeline import BackdropPipeline, GenerationRequest, InferenceConfig

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "product_id", "category", "status", "output_uri", "error", "model_name", "model_version",
    "params_hash", "seed", "created_at",
)


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


def load_request(row: dict, seed: int) -> GenerationRequest:
    """Fetch and validate a catalog row's image, mask and optional reference."""
    image, mask = load_row(row["image_uri"], row.get("mask_uri"))
    reference = reference_mask = None
    if row.get("reference_uri"):
        reference, reference_mask = load_reference(row["reference_uri"], row.get("reference_mask_uri"))
    return GenerationRequest(image=image, mask=mask, category=row["category"], reference=reference,
                             reference_mask=reference_mask, prompt=row.get("prompt"), seed=seed)


def load_reference(uri: str, mask_uri: str | None):
    """A reference with its product mask, its alpha, or (neither) entirely background."""
    img = decode_image(storage.read_bytes(uri))
    if mask_uri:
        mask = decode_mask(storage.read_bytes(mask_uri))
        try:
            validate_mask(mask, img.size)
        except EmptyMaskError:
            pass  # a reference without a product is all background: fine
    elif img.mode == "RGBA":
        mask = mask_from_alpha(img)
    else:
        mask = None
    return img.convert("RGB"), mask


@dataclass
class RunContext:
    """What every record of one generation run shares."""

    output_root: str
    model_name: str
    model_version: str
    inference: InferenceConfig
    output: OutputConfig
    seed: int
    resolution: int

    @property
    def params_hash(self) -> str:
        return params_hash(self.inference, self.output, self.seed, self.resolution)

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
        }


def generate_rows(pipe: BackdropPipeline, rows: list[dict], ctx: RunContext) -> list[dict]:
    """Generate and write one image per valid row; return one manifest record per row.

    Rows are decoded one by one (a bad row is recorded as failed with its reason), the valid
    ones are generated together in one denoising loop, and each image is written atomically
    before its record says ``ok``.
    """
    records: dict[int, dict] = {}
    loaded: list[tuple[int, GenerationRequest]] = []
    for i, row in enumerate(rows):
        try:
            req = load_request(row, row_seed(ctx.seed, str(row["product_id"])))
            pipe.model.categories.id_of(req.category)  # unknown category: fail this row only
            loaded.append((i, req))
        except InvalidInputError as e:
            records[i] = ctx.record(row, "failed", error=str(e))
    if loaded:
        images = _generate_isolating_failures(pipe, [r for _, r in loaded], ctx.inference)
        for (i, _), image in zip(loaded, images):
            if isinstance(image, Exception):
                records[i] = ctx.record(rows[i], "failed", error=f"generation_error: {image}")
                continue
            uri = output_uri(ctx.output_root, rows[i], ctx.output)
            try:
                storage.write_bytes(uri, encode_image(image, ctx.output.image_format, ctx.output.quality))
                records[i] = ctx.record(rows[i], "ok", uri=uri)
            except Exception as e:  # noqa: BLE001 - a write failure is this row's failure
                records[i] = ctx.record(rows[i], "failed", error=f"write_error: {type(e).__name__}: {e}")
    return [records[i] for i in range(len(rows))]


def _generate_isolating_failures(pipe, requests, inference) -> list[Image.Image | Exception]:
    """Run the batch; if it fails as a whole, retry row by row so only the culprit fails."""
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
