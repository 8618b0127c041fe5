"""One catalog row's way through a generation job, and the manifest record it ends as.

    load_items(rows)                fetch, decode, validate, place   CPU, no model
    generate_items(gen, items)      one denoising loop per size      the model (quality.qa.generate_scored)
    write_item(item, ctx)           encode, write atomically, record CPU, no model

A work item is one (catalog row, placement): with ``--placements 1:1,16:9`` a row is two
items, two images and two manifest records (``placement`` column; ``photo`` without
placements). Each record says what its image cost (``device_seconds``) and, when the model
has a QA scorer, its ``qa_score``, ``qa_passed`` and every candidate's seed and scores
(``candidates_json``).

The Ray Data backfill runs each as its own stage; the in-process executor (``backdrop
generate``) chains them in one process. There is one implementation of each.

A bad row becomes one ``failed`` record whose :class:`~backdrop.errors.Failure` is stored as
separate ``error_stage``, ``error_code`` and ``error_message`` columns (``error`` keeps a
readable line); it never takes its batch mates down. Importing this module does not import
torch, so the Ray CPU stages stay light processes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from PIL import Image

from .. import imaging, runtime, storage
from ..categories import CategoryMap
from ..brands import StylePins
from ..errors import GENERATE, LOAD, WRITE, Failure, InvalidParameterError
from ..inputs import Product, fetch_product
from ..limits import DEFAULT_LIMITS, Limits
from ..scope import InputScope
from ..schedulers import DEFAULT_SCHEDULER
from . import fingerprint, keys, lease

if TYPE_CHECKING:
    from ..pipeline import InferenceConfig

MANIFEST_COLUMNS = (
    "product_id", "category", "status", "output_uri", "error", "error_stage", "error_code", "error_message",
    "model_name", "model_version", "params_hash", "seed", "created_at", "run_id",
    "input_fingerprint", "last_good_uri",
    "placement", "device_seconds", "qa_score", "qa_passed", "candidates_json", "lease_epoch",
    "brand_kit", "brand_kit_version",  # the brand style kit a row named, and the version its run used
)
INT_COLUMNS = ("seed", "lease_epoch")
FLOAT_COLUMNS = ("device_seconds", "qa_score")
BOOL_COLUMNS = ("qa_passed",)
OK, FAILED = "ok", "failed"


@dataclass(frozen=True)
class OutputConfig:
    image_format: str = "png"
    quality: int = 95

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "jpg": "jpg"}.get(self.image_format.lower(), self.image_format.lower())


def params_hash(inference: InferenceConfig, output: OutputConfig, seed: int, resolution: int,
                candidates: int = 1, qa_threshold: float | None = None) -> str:
    """Identifies everything besides the model version (its QA scorer included) and the
    record's placement that decides an output's pixels and verdict. Best-of-N settings enter
    only when not the default, so outputs made before they existed keep their hash."""
    denoise = asdict(inference)
    if denoise.get("scheduler") == DEFAULT_SCHEDULER:  # outputs made before schedulers were a choice
        del denoise["scheduler"]
    fields = {"inference": denoise, "output": asdict(output), "seed": seed, "resolution": resolution}
    if candidates != 1:
        fields["candidates"] = candidates
    if qa_threshold is not None:
        fields["qa_threshold"] = float(qa_threshold)
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def output_uri(output_root: str, row: dict, output: OutputConfig, run: str | None = None) -> str:
    """Where the record's image goes: :mod:`.keys` maps hostile ids (and the placement) to keys
    under the root, in the writing run's namespace."""
    return keys.output_uri(output_root, str(row["category"]), str(row["product_id"]), output.extension,
                           row.get("placement"), run)


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
    staging: str | None = None  # the run's scratch directory (lease.Lease.staging) for temp files
    run: str | None = None  # the run's lease namespace (lease.Lease.namespace): where it writes

    @property
    def lease_epoch(self) -> int | None:
        return lease.epoch_of(self.run) if self.run else None

    @property
    def lease_token(self) -> str | None:
        return lease.token_of(self.run) if self.run else None

    def record(self, row: dict, uri: str | None = None, failure: Failure | None = None,
               made: runtime.Generated | None = None) -> dict:
        """``ok`` with the image at ``uri``, or ``failed`` with its ``failure``.

        ``last_good_uri`` is the image a reader should show: this record's own when ok; for a
        failed attempt, :func:`~backdrop.batch.manifest.latest` carries the product's last ok
        image forward, so a failed retry never hides an image that is still there.
        """
        return {
            "product_id": str(row["product_id"]),
            "category": str(row.get("category")),
            "status": FAILED if failure else OK,
            "output_uri": uri,
            "error": failure.line if failure else None,
            "error_stage": failure.stage if failure else None,
            "error_code": failure.code if failure else None,
            "error_message": failure.message if failure else None,
            "model_name": self.model_name,
            "model_version": str(self.model_version),
            "params_hash": self.params_hash,
            "seed": runtime.row_seed(self.seed, str(row["product_id"])),
            "created_at": datetime.now(timezone.utc).isoformat(),
            "run_id": self.run_id,
            "input_fingerprint": row.get("input_fingerprint"),
            "last_good_uri": None if failure else uri,
            "placement": row.get("placement") or keys.PHOTO,
            "device_seconds": made.device_seconds if made else None,
            "qa_score": made.scores["qa_score"] if made and made.scores else None,
            "qa_passed": made.qa_passed if made else None,
            "candidates_json": json.dumps(made.candidates) if made and made.candidates else None,
            "lease_epoch": self.lease_epoch,
            "brand_kit": row.get("brand_kit"),
            "brand_kit_version": row.get("brand_kit_version"),
        }


@dataclass
class WorkItem:
    """One catalog row on its way through load -> generate -> write.

    ``failure`` is set by the first stage that fails the row; later stages pass it through.
    """

    row: dict  # the catalog row, its ``input_fingerprint`` and this item's ``placement``
    product: Product | None = None  # laid on the placement's canvas
    output: Image.Image | None = None  # the generated ad, product pixels pasted back
    failure: Failure | None = None
    made: runtime.Generated | None = None  # the output's cost and QA (its image is ``output``)

    @property
    def product_id(self) -> str:
        return str(self.row["product_id"])

    @property
    def ready(self) -> bool:
        """Loaded, valid and not generated yet."""
        return self.failure is None and self.product is not None and self.output is None


def load_item(row: dict, categories: CategoryMap | None = None, limits: Limits = DEFAULT_LIMITS,
              scope: InputScope | None = None) -> WorkItem:
    """Fetch and validate one row (on its ``placement``); any failure is recorded on the item,
    never raised. With ``categories`` (the model's map) an unknown category fails before
    anything is fetched, and with ``scope`` so does a URI outside it (``input_out_of_scope``)."""
    return load_items([row], categories, limits, scope)[0]


def load_items(rows: list[dict], categories: CategoryMap | None = None,
               limits: Limits = DEFAULT_LIMITS, scope: InputScope | None = None,
               work: tuple[int, int] | None = None, styles: StylePins | None = None,
               seed: int = 0) -> list[WorkItem]:
    """:func:`load_item` for a batch: a product whose placements share the batch is fetched,
    fingerprinted and validated once; a bad row fails each of its placements with the same
    failure, a placement that cannot hold the product (a pixel slot too small) fails alone.

    With ``work`` = (candidates, steps) each output is priced as an HTTP request is (output
    megapixels x candidates x steps, ``Limits.check_work``): one over ``max_request_work``
    fails alone as ``request_too_large``, with its figure, before any generation.

    A row's ``brand_style`` names a kit (``backdrop.brands``) instead of a ``reference_uri``
    (both: ``invalid_parameter``): its reference is the kit's pick for the row's seed, from the
    version ``styles`` pinned for the run; an unknown kit fails the row ``unknown_style``."""
    styles = styles if styles is not None else StylePins()
    loaded: dict[str, tuple[str, Product | None, Failure | None]] = {}
    items = []
    for row in rows:
        pid = str(row["product_id"])
        if pid not in loaded:
            product = failure = None
            read: dict[str, str] = {}  # URI -> identity of the bytes read (the record's fingerprint)
            try:
                if categories is not None:
                    categories.id_of(row["category"])
                if scope is not None:
                    for field, uri in fingerprint.input_uris(row).items():
                        scope.check(field, uri)
                product = fetch_product(row, limits, read, reference=_kit_reference(row, styles, seed))
            except Exception as e:  # noqa: BLE001 - an unexpected failure is still this row's failure
                failure = Failure.of(LOAD, e)
            fp = fingerprint.of_row(row, read, styles)
            loaded[pid] = (fp, product, failure)
        fp, product, failure = loaded[pid]
        item = WorkItem({**row, "input_fingerprint": fp, **_kit_columns(row, styles)}, failure=failure)
        if product is not None:
            try:
                item.product = _placed(product, row.get("placement"), limits)
                if work is not None:
                    limits.check_work(item.product.image.width * item.product.image.height / 1e6, *work)
            except Exception as e:  # noqa: BLE001 - this placement's failure
                item.product, item.failure = None, Failure.of(LOAD, e)
        items.append(item)
    return items


def _kit_reference(row: dict, styles: StylePins, seed: int) -> tuple[bytes, bytes | None] | None:
    style = row.get("brand_style")
    if not style:
        return None
    if row.get("reference_uri"):
        raise InvalidParameterError("the row names both a reference_uri and a brand_style; give one")
    return styles.kit(style).pick(runtime.row_seed(seed, str(row["product_id"])))


def _kit_columns(row: dict, styles: StylePins) -> dict:
    if not row.get("brand_style"):
        return {}
    pinned = styles.label(row["brand_style"])
    name, _, version = pinned.partition("/")
    return {"brand_kit": name if version else row["brand_style"], "brand_kit_version": version or None}


def _placed(product: Product, placement: str | None, limits: Limits) -> Product:
    if placement in (None, "", keys.PHOTO):
        return product
    from ..placements import parse_placement

    return product.placed(parse_placement(placement, limits), limits=limits)


def generate_items(gen: runtime.LoadedGenerator, items: list[WorkItem], inference: InferenceConfig,
                   seed: int, candidates: int = 1, qa_threshold: float | None = None) -> int:
    """Generate every ready item of a batch through the runtime; returns how many were sent.

    The selection stage already grouped the rows by category, so each category's prompts are
    encoded once (the pipeline caches embeddings across batches too); the runtime runs one
    loop per generation size (placement). With the model's QA scorer every output is scored
    and the best of ``candidates`` kept (:func:`backdrop.quality.qa.generate_scored`).
    """
    from ..quality.qa import generate_scored

    ready = [it for it in items if it.ready]
    requests = [it.product.requests([runtime.row_seed(seed, it.product_id)])[0] for it in ready]
    for item, result in zip(ready, generate_scored(gen, requests, inference, candidates, qa_threshold)):
        if isinstance(result, Failure):
            item.failure = result
        else:
            item.output, item.made = result.image, result
    return len(ready)


def write_item(item: WorkItem, ctx: RunContext) -> dict:
    """Encode and write the item's image atomically, then return its manifest record.

    A record says ``ok`` only once its image is complete at ``output_uri``.
    """
    if item.failure is not None:
        return ctx.record(item.row, failure=item.failure)
    if item.output is None:
        return ctx.record(item.row, failure=Failure(GENERATE, "generation_error", "the row was never generated"))
    uri = output_uri(ctx.output_root, item.row, ctx.output, ctx.run)
    try:
        storage.write_bytes(uri, imaging.encode_image(item.output, ctx.output.image_format, ctx.output.quality),
                            staging=ctx.staging)
    except Exception as e:  # noqa: BLE001 - a write failure is this row's failure
        return ctx.record(item.row, failure=Failure.of(WRITE, e))
    return ctx.record(item.row, uri, made=item.made)
