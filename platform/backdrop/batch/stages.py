"""The backfill's stages, on Ray Data or in this process: the same functions either way.

::

    read_parquet(catalog)                      streaming, file by file
      -> map_batches(select_rows)     tasks    category filter, --limit, one row per placement, skip records done
      -> map_batches(load_batch)      tasks    fetch, decode, validate, place: a bad row becomes failed items
      -> map_batches(GeneratorActor)  actors   the model loads once per actor; one denoising loop per batch
      -> map_batches(write_batch)     tasks    encode + write the images, then the batch's manifest part

:func:`run_local` chains the same four functions in one process (``backdrop generate``, the
benchmark's bare baseline): same plan, same manifest, same resume. Rows and pixels stream
through the object store in bounded batches; every finished batch is one manifest part.

**Small machines.** An actor pool whose actors reserve whole CPUs can starve the read tasks:
on clusters of at most 4 CPUs the actors reserve half a CPU by default, and CPU inference
uses as many torch threads as the node has cores (divided among the actors).
"""

from __future__ import annotations

import io
import itertools
import json
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from PIL import Image

from .. import runtime
from ..catalog import GENERATION_COLUMNS, catalog_files, iter_catalog, normalize_rows
from ..categories import CategoryMap
from ..errors import Failure
from ..inputs import Product
from ..limits import Limits
from ..scope import InputScope
from . import lease, manifest
from .config import BackfillConfig, RowSelection
from .plan import Plan
from .keys import PHOTO
from .manifest import record_key_column
from .records import RunContext, WorkItem, generate_items, load_items, write_item

SMALL_CLUSTER_CPUS = 4

PIXEL_FIELDS = ("image", "mask", "reference", "reference_mask", "output")
IMAGE_FIELDS = ("image", "reference", "output")  # PIL images; the masks are float arrays
FAILURE_FIELDS = ("error_stage", "error_code", "error_message")
ROW_FIELDS = GENERATION_COLUMNS + ("placement", "input_fingerprint", "brand_kit", "brand_kit_version")  # the row as loaded
MADE_FIELD = "made"  # the output's runtime.Generated without its image, as JSON
ITEM_SCHEMA = pa.schema([(c, pa.string()) for c in ROW_FIELDS + FAILURE_FIELDS + (MADE_FIELD,)]
                        + [(f, pa.binary()) for f in PIXEL_FIELDS])


# --------------------------------------------------------------------------- items <-> Arrow


def _pack(value) -> bytes | None:
    if value is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def _unpack(data: bytes | None, as_image: bool):
    if data is None:
        return None
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    return Image.fromarray(arr) if as_image else arr


def items_to_table(items: list[WorkItem], pixels: tuple[str, ...] = PIXEL_FIELDS) -> pa.Table:
    """WorkItems as an Arrow table (pixels as .npy bytes) to hand to the next stage."""
    cols = {c: [it.row.get(c) for it in items] for c in ROW_FIELDS}
    for f in FAILURE_FIELDS:
        cols[f] = [getattr(it.failure, f.removeprefix("error_")) if it.failure else None for it in items]
    cols[MADE_FIELD] = [_made_json(it.made) for it in items]
    for f in PIXEL_FIELDS:
        source = [it.output if f == "output" else getattr(it.product, f, None) for it in items]
        cols[f] = [_pack(v) if f in pixels else None for v in source]
    return pa.table(cols, schema=ITEM_SCHEMA)


def items_from_table(table: pa.Table) -> list[WorkItem]:
    items = []
    for rec in table.to_pylist():
        row = {c: rec[c] for c in ROW_FIELDS}
        px = {f: _unpack(rec[f], f in IMAGE_FIELDS) for f in PIXEL_FIELDS}
        product = None if px["image"] is None else Product(px["image"], px["mask"], row["category"], px["reference"],
                                                           px["reference_mask"], row.get("prompt") or None)
        failure = Failure(*(rec[f] for f in FAILURE_FIELDS)) if rec["error_code"] else None
        items.append(WorkItem(row, product, px["output"], failure, _made_from(rec[MADE_FIELD], px["output"])))
    return items


def _made_json(made: runtime.Generated | None) -> str | None:
    if made is None:
        return None
    return json.dumps({"seed": made.seed, "device_seconds": made.device_seconds,
                       "generation_size": list(made.generation_size), "scores": made.scores,
                       "candidates": made.candidates, "qa_passed": made.qa_passed})


def _made_from(text: str | None, image) -> runtime.Generated | None:
    if text is None or image is None:
        return None
    d = json.loads(text)
    return runtime.Generated(image, d["seed"], d["device_seconds"], tuple(d["generation_size"]), d["scores"],
                             d["candidates"], d["qa_passed"])


# --------------------------------------------------------------------------- the stages


def select_rows(batch: pa.Table, *, selection: RowSelection, done_keys: pa.Array,
                scope_ids: pa.Array | None, exclude_ids: pa.Array | None = None,
                placements: tuple[str, ...] = (PHOTO,)) -> pa.Table:
    """The records of this run not done yet: each row once per placement (a ``placement``
    column), grouped by category and placement (so a batch shares prompts and latent sizes).

    Rows without a product_id and every occurrence of an ``exclude_ids`` id (the duplicated
    ones) are dropped: the planner saw the whole catalog, failed the extra occurrences and
    feeds each duplicated id's first occurrence in separately (``Plan.first_rows``).
    """
    rows = selection.by_category(normalize_rows(batch))
    rows = rows.filter(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(rows["product_id"]), ""), False))
    if exclude_ids is not None and len(exclude_ids):
        rows = rows.filter(pc.invert(pc.is_in(rows["product_id"], value_set=exclude_ids)))
    if scope_ids is not None:
        rows = rows.filter(pc.is_in(rows["product_id"], value_set=scope_ids))
    rows = pa.concat_tables([rows.append_column("placement", pa.array([p] * rows.num_rows, pa.string()))
                             for p in placements])
    if len(done_keys):
        key = record_key_column(rows["product_id"].combine_chunks(), rows["placement"].combine_chunks())
        rows = rows.filter(pc.invert(pc.is_in(key, value_set=done_keys)))
    return rows.sort_by([("category", "ascending"), ("placement", "ascending")])


def load_batch(batch: pa.Table, *, categories: CategoryMap, limits: Limits, scope: InputScope,
               work: tuple[int, int], styles=None, seed: int = 0) -> pa.Table:
    """Fetch, decode, validate and price on CPU; an unknown category or an input outside the
    job's scope fails before any fetch. A row's brand style is its run's pinned kit version."""
    return items_to_table(load_items(batch.to_pylist(), categories, limits, scope, work, styles, seed))


def cpu_threads(threads: int | None, max_actors: int) -> int:
    """Torch threads for CPU inference: Ray would give a half-CPU actor one; use the node's cores."""
    return threads or max(1, len(os.sched_getaffinity(0)) // max_actors)


class GeneratorActor:
    """Holds one generator: the model loads once per actor, then denoises batch after batch.

    ``model_ref`` is pinned (``models:/NAME/VERSION`` or a path) so that an alias moving during
    the run cannot mix versions; ``tracking_uri`` is the driver's registry.
    """

    def __init__(self, model_ref: str, tracking_uri: str, inference, seed: int, device: str = "cpu",
                 threads: int | None = None, max_actors: int = 1, candidates: int = 1,
                 qa_threshold: float | None = None, compile: str = "auto", batch_bucket: int | None = None):
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        # a compiled generator is warmed up here, at actor start, before the first batch arrives
        self.generator = runtime.load(model_ref, device, cpu_threads(threads, max_actors) if device == "cpu" else None,
                                      compile=compile, batch_bucket=batch_bucket)
        self.inference, self.seed = inference, seed
        self.candidates, self.qa_threshold = candidates, qa_threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = items_from_table(batch)
        generate_items(self.generator, items, self.inference, self.seed, self.candidates, self.qa_threshold)
        return items_to_table(items, pixels=("output",))


def write_batch(batch: pa.Table, *, ctx: RunContext) -> pa.Table:
    """Write the batch's images (each atomically), then its records as one manifest part, all
    in the run's namespace; first make sure the run still holds the output's lease (a run
    that lost it raises ``LeaseLostError`` here and writes nothing more)."""
    if ctx.run:
        lease.assert_holder(ctx.output_root, ctx.lease_token)
    records = [write_item(item, ctx) for item in items_from_table(batch)]
    if records:
        manifest.write_part(ctx.output_root, records, staging=ctx.staging, run=ctx.run)
    return pa.Table.from_pylist(records, schema=manifest.SCHEMA)


# --------------------------------------------------------------------------- on Ray Data


@dataclass(frozen=True)
class ActorStage:
    """The generator stage: which actor class, with which arguments and resources."""

    cls: type
    kwargs: dict
    num_cpus: float
    num_gpus: float
    concurrency: int


def actor_stage(config: BackfillConfig, model_ref: str, tracking_uri: str, cls: type | None = None) -> ActorStage:
    import ray

    cpus = config.cpus_per_actor
    if cpus is None:
        small = ray.cluster_resources().get("CPU", 0) <= SMALL_CLUSTER_CPUS
        cpus = 0.5 if small and not config.num_gpus else 1.0
    kwargs = generator_kwargs(config, model_ref, tracking_uri, config.threads_per_actor, config.concurrency)
    return ActorStage(cls or GeneratorActor, kwargs, cpus, config.num_gpus, config.concurrency)


def generator_kwargs(config: BackfillConfig, model_ref: str, tracking_uri: str, threads: int | None,
                     max_actors: int) -> dict:
    """:class:`GeneratorActor`'s arguments, for the actor pool and the in-process executor alike."""
    return dict(model_ref=model_ref, tracking_uri=tracking_uri, inference=config.inference(), seed=config.seed,
                device="cuda" if config.num_gpus else "cpu", threads=threads, max_actors=max_actors,
                candidates=config.candidates, qa_threshold=config.qa_threshold, compile=config.compile,
                batch_bucket=config.batch_bucket)


def build_dataset(config: BackfillConfig, plan: Plan, ctx: RunContext, categories: CategoryMap,
                  generator: ActorStage):
    """The streaming pipeline of the module docstring. Ray Data puts each stage's arguments
    (the done ids included) in the object store once, not into every task."""
    import ray

    from ..cluster import parquet_reader_v1

    fs, files = catalog_files(config.catalog)
    present = pads.dataset(files[:1], filesystem=fs, format="parquet").schema.names
    select = dict(selection=config.selection(), done_keys=plan.done_keys, scope_ids=plan.scope_ids,
                  placements=config.placement_names)
    with parquet_reader_v1():
        ds = ray.data.read_parquet(files, filesystem=fs)
    ds = (ds.select_columns([c for c in GENERATION_COLUMNS if c in present])
          .map_batches(select_rows, batch_format="pyarrow", fn_kwargs=dict(select, exclude_ids=plan.exclude_ids)))
    if plan.first_rows is not None and plan.first_rows.num_rows:
        ds = ds.union(ray.data.from_arrow(plan.first_rows)
                      .map_batches(select_rows, batch_format="pyarrow", fn_kwargs=select))
    return (
        ds
        # One block per generator batch from here on: every stage streams batch by batch, and
        # each finished batch becomes one manifest part (the unit of resume).
        .repartition(target_num_rows_per_block=config.batch_size, strict=True)
        .map_batches(load_batch, batch_format="pyarrow", batch_size=config.batch_size,
                     fn_kwargs=config.load_kwargs(categories, plan.styles))
        .map_batches(generator.cls, batch_format="pyarrow", batch_size=config.batch_size,
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=generator.concurrency),
                     num_cpus=generator.num_cpus, num_gpus=generator.num_gpus or None,
                     fn_constructor_kwargs=generator.kwargs)
        .map_batches(write_batch, batch_format="pyarrow", fn_kwargs=dict(ctx=ctx))
    )


# --------------------------------------------------------------------------- in this process


def run_local(config: BackfillConfig, plan: Plan, ctx: RunContext, categories: CategoryMap,
              generator: GeneratorActor) -> Iterator[pa.Table]:
    """The same stages chained in this process; yields each batch's records as they are written."""
    select = dict(selection=config.selection(), done_keys=plan.done_keys, scope_ids=plan.scope_ids,
                  placements=config.placement_names)
    selected = (select_rows(table, **select, exclude_ids=plan.exclude_ids)
                for table in iter_catalog(config.catalog, list(GENERATION_COLUMNS)))
    if plan.first_rows is not None and plan.first_rows.num_rows:
        selected = itertools.chain(selected, [select_rows(plan.first_rows, **select)])
    load = config.load_kwargs(categories, plan.styles)  # the scope is resolved once, not per batch
    for rows in _rebatch(selected, config.batch_size):
        loaded = load_batch(rows, **load)
        yield write_batch(generator(loaded), ctx=ctx)


def _rebatch(tables: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last may be shorter), like the Ray pipeline's blocks."""
    pending: list[pa.Table] = []
    n = 0
    for t in tables:
        pending.append(t)
        n += t.num_rows
        while n >= size:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, size)
            pending, n = [whole.slice(size)], n - size
    if n:
        yield pa.concat_tables(pending)
