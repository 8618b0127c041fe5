"""Catalog backfill on Ray Data: every catalog row becomes one generated ad image and one manifest record.

::

    read_parquet(catalog)                      streaming, file by file
      -> map_batches(select_rows)     tasks    category filter, --limit, skip rows already done
      -> map_batches(load_batch)      tasks    fetch, decode, validate: a bad row becomes a failed item
      -> map_batches(GeneratorActor)  actors   the model loads once per actor; one denoising loop per batch
      -> map_batches(write_batch)     tasks    encode + write the images, then the batch's manifest part
      -> driver                                tallies the records; consolidates the manifest; MLflow run

The stages are thin: each calls the one implementation in ``backdrop.generation`` that the
in-process loop calls too. Rows and pixels stream through the object store in bounded
batches; the driver holds the ids of rows already done and counters, never the catalog.

**Idempotent and resumable.** Before anything runs, the driver compares the catalog with the
manifest (``backdrop.manifest``): a row whose latest record is ``ok`` with the same model
version and parameters hash is skipped, everything else (new, failed, made by another model
or other parameters) is generated. Every finished batch appends a part file after its images,
so a run killed at any moment (driver or actor) and started again finishes the remaining rows;
at the end, ``manifest.parquet`` holds exactly one record, the latest, per product.

**Failures are data.** Per-row failures are caught inside the stages and written as ``failed``
records with their reason; the run exits non-zero only above ``max_failure_rate``. (Ray Data's
``max_errored_blocks`` would drop whole blocks, so it is not used.)

**Small machines.** An actor pool whose actors reserve whole CPUs can starve the read tasks:
on clusters of at most 4 CPUs the actors reserve half a CPU by default, and CPU inference
uses as many torch threads as the node has cores (divided among the actors).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
from PIL import Image

from . import manifest, storage
from .cluster import init_ray
from .categories import CategoryMap, normalize
from .data.catalog import GENERATION_COLUMNS, catalog_files, iter_catalog, normalize_rows
from .generation import (
    FAILED,
    OK,
    OutputConfig,
    RunContext,
    WorkItem,
    failed_stage,
    generate_items,
    load_item,
    params_hash,
    read_model_info,
    write_item,
)
from .manifest import DONE, Target

log = logging.getLogger(__name__)

BACKFILL_EXPERIMENT = "backdrop-backfill"
SMALL_CLUSTER_CPUS = 4
SHEET_IMAGES = 8
# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BackfillConfig:
    catalog: str  # Parquet file, directory or s3:// prefix
    model: str  # models:/NAME@ALIAS, models:/NAME/VERSION or a saved generator's path
    output: str  # directory or s3:// prefix
    categories: tuple[str, ...] = ()  # only these (all when empty)
    steps: int = 50
    guidance: float = 2.0
    seed: int = 0
    batch_size: int = 16
    concurrency: int = 1  # actors: the pool scales between 1 and this
    num_gpus: float = 0.0  # per actor; > 0 runs the generator on CUDA in float16
    cpus_per_actor: float | None = None  # None: 0.5 on clusters of <= 4 CPUs, else 1
    threads_per_actor: int | None = None  # CPU inference; None: the node's cores / concurrency
    image_format: str = "png"
    quality: int = 95
    limit: int | None = None  # the first N rows (after the category filter) in catalog order
    max_failure_rate: float = 0.1
    experiment: str = BACKFILL_EXPERIMENT
    kind: str = "backfill"  # MLflow tag: backfill | nightly

    def inference(self):
        from .pipeline import InferenceConfig

        config = InferenceConfig(num_inference_steps=self.steps, guidance_scale=self.guidance)
        config.validate()
        return config

    def output_config(self) -> OutputConfig:
        return OutputConfig(self.image_format, self.quality)

    def selection(self) -> "RowSelection":
        return RowSelection(tuple(self.categories), self.limit)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RowSelection:
    """The catalog rows a run covers: ``categories`` (all when empty), then the first ``limit``."""

    categories: tuple[str, ...] = ()
    limit: int | None = None

    def by_category(self, rows: pa.Table) -> pa.Table:
        if not self.categories:
            return rows
        wanted = {normalize(c) for c in self.categories}
        keep = [c for c in pc.unique(rows["category"]).to_pylist() if c is not None and normalize(c) in wanted]
        return rows.filter(pc.is_in(rows["category"], value_set=pa.array(keep, pa.string())))


@dataclass
class Plan:
    """What a run will do, decided on the driver before any pixel moves."""

    counts: Counter = field(default_factory=Counter)  # (category, reason) -> rows
    done_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    scope_ids: pa.Array | None = None  # with a limit: exactly the rows in scope

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def skipped(self) -> int:
        return sum(n for (_, reason), n in self.counts.items() if reason == DONE)

    @property
    def todo(self) -> int:
        return self.total - self.skipped

    @property
    def categories(self) -> list[str]:
        return sorted({c for c, _ in self.counts})

    def todo_in(self, categories) -> int:
        wanted = {normalize(c) for c in categories}
        return sum(n for (c, r), n in self.counts.items() if r != DONE and normalize(c) in wanted)

    def format(self) -> str:
        """Rows per category and reason (what --dry-run prints)."""
        reasons = manifest.REASONS
        lines = [f"{'category':16s}" + "".join(f"{r:>16s}" for r in reasons) + f"{'to generate':>14s}"]
        for c in self.categories + ["(all)"]:
            n = {r: sum(v for (cc, rr), v in self.counts.items() if rr == r and c in (cc, "(all)")) for r in reasons}
            lines.append(f"{c:16s}" + "".join(f"{n[r]:16d}" for r in reasons) + f"{sum(n.values()) - n[DONE]:14d}")
        return "\n".join(lines)


def plan_rows(catalog: str, output: str, selection: RowSelection, target_of: Callable[[str], Target]) -> Plan:
    """Classify every catalog row in scope against the manifest (``manifest.REASONS``).

    Streams the catalog's ``product_id`` and ``category`` columns; keeps counters and the ids of
    rows already done (those the pipeline skips).
    """
    index = manifest.latest_index(output)
    plan, done, scope, left = Plan(), [], [], selection.limit
    for table in iter_catalog(catalog, ["product_id", "category"]):
        rows = selection.by_category(normalize_rows(table, ("product_id", "category")))
        if left is not None:
            rows = rows.slice(0, left)
            left -= rows.num_rows
            scope.extend(rows["product_id"].chunks)
        reasons = manifest.classify(rows.to_pandas(), index, target_of)
        plan.counts.update(zip(rows["category"].to_pylist(), reasons))
        done.extend(pc.filter(rows["product_id"], pa.array(reasons == DONE)).chunks)
        if left == 0:
            break
    plan.done_ids = pa.chunked_array(done, pa.string()).combine_chunks()
    if selection.limit is not None:
        plan.scope_ids = pa.chunked_array(scope, pa.string()).combine_chunks()
    return plan


# --------------------------------------------------------------------------- the stages

PIXEL_FIELDS = ("image", "mask", "reference", "reference_mask", "output")
IMAGE_FIELDS = ("image", "reference", "output")  # PIL images; the masks are float arrays
ITEM_SCHEMA = pa.schema([(c, pa.string()) for c in GENERATION_COLUMNS] + [("error", pa.string())]
                        + [(f, pa.binary()) for f in PIXEL_FIELDS])


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
    cols = {c: [it.row.get(c) for it in items] for c in GENERATION_COLUMNS}
    cols["error"] = [it.error for it in items]
    for f in PIXEL_FIELDS:
        cols[f] = [_pack(getattr(it, f)) if f in pixels else None for it in items]
    return pa.table(cols, schema=ITEM_SCHEMA)


def items_from_table(table: pa.Table) -> list[WorkItem]:
    items = []
    for rec in table.to_pylist():
        pixels = {f: _unpack(rec[f], f in IMAGE_FIELDS) for f in PIXEL_FIELDS}
        items.append(WorkItem({c: rec[c] for c in GENERATION_COLUMNS}, error=rec["error"], **pixels))
    return items


def select_rows(batch: pa.Table, *, selection: RowSelection, done_ids: pa.Array,
                scope_ids: pa.Array | None) -> pa.Table:
    """Rows of this run not done yet, grouped by category (so a batch shares its prompts)."""
    rows = selection.by_category(normalize_rows(batch))
    if scope_ids is not None:
        rows = rows.filter(pc.is_in(rows["product_id"], value_set=scope_ids))
    if len(done_ids):
        rows = rows.filter(pc.invert(pc.is_in(rows["product_id"], value_set=done_ids)))
    return rows.sort_by("category")


def load_batch(batch: pa.Table, *, categories: CategoryMap) -> pa.Table:
    """Fetch, decode and validate on CPU; an unknown category fails before any fetch."""
    return items_to_table([load_item(row, categories) for row in batch.to_pylist()])


class GeneratorActor:
    """Holds one generator: the model loads once per actor, then denoises batch after batch.

    ``model_ref`` is pinned (``models:/NAME/VERSION`` or a path) so that an alias moving during
    the run cannot mix versions; ``tracking_uri`` is the driver's registry.
    """

    def __init__(self, model_ref: str, tracking_uri: str, inference, seed: int, device: str = "cpu",
                 threads: int | None = None, max_actors: int = 1):
        import torch

        from . import registry
        from .pipeline import BackdropPipeline

        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        if device == "cpu":  # Ray would give a half-CPU actor one thread; use the node's cores
            torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // max_actors))
            placement = {}
        else:
            placement = {"device": device, "torch_dtype": torch.float16}
        self.pipe = BackdropPipeline(registry.resolve(model_ref).load(**placement))
        self.inference, self.seed = inference, seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = items_from_table(batch)
        generate_items(self.pipe, items, self.inference, self.seed)
        return items_to_table(items, pixels=("output",))


def write_batch(batch: pa.Table, *, ctx: RunContext) -> pa.Table:
    """Write the batch's images (each atomically), then its records as one manifest part."""
    records = [write_item(item, ctx) for item in items_from_table(batch)]
    if records:
        manifest.write_part(ctx.output_root, records)
    return pa.Table.from_pylist(records, schema=manifest.SCHEMA)


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class ActorStage:
    """The generator stage: which actor class, with which arguments and resources."""

    cls: type
    kwargs: dict
    num_cpus: float
    num_gpus: float
    concurrency: int


def actor_stage(config: BackfillConfig, model_ref: str, tracking_uri: str, cls: type | None = None) -> ActorStage:
    cpus = config.cpus_per_actor
    if cpus is None:
        small = ray.cluster_resources().get("CPU", 0) <= SMALL_CLUSTER_CPUS
        cpus = 0.5 if small and not config.num_gpus else 1.0
    kwargs = dict(model_ref=model_ref, tracking_uri=tracking_uri, inference=config.inference(), seed=config.seed,
                  device="cuda" if config.num_gpus else "cpu", threads=config.threads_per_actor,
                  max_actors=config.concurrency)
    return ActorStage(cls or GeneratorActor, kwargs, cpus, config.num_gpus, config.concurrency)


def build_dataset(config: BackfillConfig, plan: Plan, ctx: RunContext, categories: CategoryMap,
                  generator: ActorStage) -> ray.data.Dataset:
    """The streaming pipeline of the module docstring. Ray Data puts each stage's arguments
    (the done ids included) in the object store once, not into every task."""
    fs, files = catalog_files(config.catalog)
    present = pads.dataset(files[:1], filesystem=fs, format="parquet").schema.names
    return (
        ray.data.read_parquet(files, filesystem=fs)
        .select_columns([c for c in GENERATION_COLUMNS if c in present])
        .map_batches(select_rows, batch_format="pyarrow",
                     fn_kwargs=dict(selection=config.selection(), done_ids=plan.done_ids, scope_ids=plan.scope_ids))
        # One block per generator batch from here on: every stage streams batch by batch, and
        # each finished batch becomes one manifest part (the unit of resume).
        .repartition(target_num_rows_per_block=config.batch_size, strict=True)
        .map_batches(load_batch, batch_format="pyarrow", batch_size=config.batch_size,
                     fn_kwargs=dict(categories=categories))
        .map_batches(generator.cls, batch_format="pyarrow", batch_size=config.batch_size,
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=generator.concurrency),
                     num_cpus=generator.num_cpus, num_gpus=generator.num_gpus or None,
                     fn_constructor_kwargs=generator.kwargs)
        .map_batches(write_batch, batch_format="pyarrow", fn_kwargs=dict(ctx=ctx))
    )


# --------------------------------------------------------------------------- running it


@dataclass
class Tally:
    """What the driver keeps of the records streaming back: counters only."""

    ok: Counter = field(default_factory=Counter)  # category -> rows
    failed: Counter = field(default_factory=Counter)  # category -> rows
    errors: Counter = field(default_factory=Counter)  # (stage, error code) -> rows
    first_at: float | None = None  # when the first records arrived (perf_counter)

    def add(self, records: pa.Table) -> None:
        self.first_at = self.first_at or time.perf_counter()
        for category, status, error in zip(*(records[c].to_pylist() for c in ("category", "status", "error"))):
            (self.ok if status == OK else self.failed)[category] += 1
            if status == FAILED:
                self.errors[(failed_stage(error), (error or "").split(":", 1)[0])] += 1

    @property
    def rows(self) -> int:
        return sum(self.ok.values()) + sum(self.failed.values())

    def failed_in(self, stage: str) -> int:
        return sum(n for (s, _), n in self.errors.items() if s == stage)


@dataclass
class BackfillResult:
    config: BackfillConfig
    model_name: str
    model_version: str
    params_hash: str
    run_id: str | None
    plan: Plan
    tally: Tally
    seconds: float = 0.0  # the whole run, from resolving the model to the consolidated manifest
    pipeline_seconds: float = 0.0  # the Ray Data execution
    startup_seconds: float = 0.0  # from the start of the execution to the first records
    operators: list[tuple[str, float]] = field(default_factory=list)  # Ray Data operator wall times

    @property
    def missing(self) -> int:
        """Rows the pipeline should have returned but did not (0 unless something is badly wrong)."""
        return max(0, self.plan.todo - self.tally.rows)

    @property
    def ok(self) -> int:
        return self.plan.skipped + sum(self.tally.ok.values())

    @property
    def failed(self) -> int:
        return sum(self.tally.failed.values()) + self.missing

    @property
    def failure_rate(self) -> float:
        """Failed rows over the rows in scope (rows done earlier were ok, so reruns agree)."""
        return self.failed / self.plan.total if self.plan.total else 0.0

    @property
    def generated(self) -> int:
        """Rows that reached the generator (0 on a rerun of a finished backfill)."""
        return self.tally.rows - self.tally.failed_in("load")

    @property
    def images_per_second(self) -> float:
        return sum(self.tally.ok.values()) / self.pipeline_seconds if self.pipeline_seconds else 0.0

    def exit_code(self) -> int:
        return 0 if self.failure_rate <= self.config.max_failure_rate else 1

    def metrics(self) -> dict[str, float]:
        return {"rows_in": self.plan.total, "rows_ok": self.ok, "rows_failed": self.failed,
                "rows_skipped": self.plan.skipped, "rows_generated": self.generated,
                "images_written": sum(self.tally.ok.values()), "failure_rate": self.failure_rate,
                "images_per_s": self.images_per_second, "startup_s": self.startup_seconds, "pipeline_s": self.pipeline_seconds, "wall_s": self.seconds}

    def as_dict(self) -> dict:
        return {"config": asdict(self.config), "model_name": self.model_name, "model_version": self.model_version,
                "params_hash": self.params_hash, "run_id": self.run_id, "metrics": self.metrics(),
                "plan": {f"{c}/{r}": n for (c, r), n in sorted(self.plan.counts.items())},
                "errors": {f"{s}/{code}": n for (s, code), n in sorted(self.tally.errors.items())},
                "operators": dict(self.operators)}

    def summary(self) -> str:
        """The per-stage summary printed at the end of a run."""
        t = self.tally
        loaded = t.rows - t.failed_in("load")
        generated = loaded - t.failed_in("generate")

        def reasons(stage):
            return ", ".join(f"{code} {n}" for (s, code), n in sorted(t.errors.items()) if s == stage)

        lines = [
            f"{self.config.kind} {self.config.model} -> {self.model_name} v{self.model_version} "
            f"(params {self.params_hash}, MLflow run {self.run_id})",
            f"  {'stage':10s}{'rows in':>9s}{'ok':>7s}{'failed':>8s}   notes",
            f"  {'select':10s}{self.plan.total:9d}{self.plan.todo:7d}{0:8d}   "
            f"{self.plan.skipped} already done with this model and params (skipped)",
            f"  {'load':10s}{t.rows:9d}{loaded:7d}{t.failed_in('load'):8d}   {reasons('load')}",
            f"  {'generate':10s}{loaded:9d}{generated:7d}{t.failed_in('generate'):8d}   {reasons('generate')}",
            f"  {'write':10s}{generated:9d}{sum(t.ok.values()):7d}{t.failed_in('write'):8d}   {reasons('write')}",
            f"  manifest: {self.plan.total} rows in scope = {self.ok} ok + {self.failed} failed "
            f"(failure rate {self.failure_rate:.1%}, max {self.config.max_failure_rate:.1%})",
            f"  time: pipeline {self.pipeline_seconds:.1f}s ({self.images_per_second:.2f} images/s, first records "
            f"after {self.startup_seconds:.1f}s), whole run {self.seconds:.1f}s",
        ]
        if self.missing:
            lines.append(f"  ERROR: {self.missing} rows never came back from the pipeline (counted as failed)")
        if self.operators:
            lines.append("  Ray Data operators: " + ", ".join(f"{n} {s:.1f}s" for n, s in self.operators))
        return "\n".join(lines)


def resolve_target(config: BackfillConfig):
    """(resolved model, pinned reference, model info, target) for a config's model and params."""
    from . import registry

    model = registry.resolve(config.model)
    pinned = f"models:/{model.name}/{model.version}" if config.model.startswith("models:/") else model.path
    info = read_model_info(model.path)
    target = Target(model.name, str(model.version),
                    params_hash(config.inference(), config.output_config(), config.seed, info.resolution))
    return model, pinned, info, target


def run_backfill(config: BackfillConfig, generator_cls: type | None = None,
                 on_records: Callable[[pa.Table], None] | None = None) -> BackfillResult:
    """Backfill ``config.catalog`` into ``config.output``; see the module docstring.

    ``generator_cls`` replaces ``GeneratorActor`` (same constructor): the benchmark isolates the
    platform's overhead with a no-op generator. ``on_records`` sees each batch's records as they
    stream back to the driver (progress hooks, timing).
    """
    from . import registry

    started = time.perf_counter()
    model, pinned, info, target = resolve_target(config)
    plan = plan_rows(config.catalog, config.output, config.selection(), lambda _: target)
    log.info("plan: %d rows in scope, %d already done, %d to generate", plan.total, plan.skipped, plan.todo)
    swept = storage.remove_partial_writes(config.output)
    if swept:
        log.info("removed %d partial files left by an interrupted run", swept)

    with _tracking_run(config, model, target) as run_id:
        ctx = RunContext(config.output, model.name, str(model.version), target.params_hash, config.seed,
                         config.output_config(), run_id)
        result = BackfillResult(config, model.name, str(model.version), target.params_hash, run_id, plan, Tally())
        if plan.todo:
            init_ray()  # a no-op when the job (or the caller) has started Ray already
            stage = actor_stage(config, pinned, registry.tracking_uri(), generator_cls)
            _execute(build_dataset(config, plan, ctx, info.categories, stage), result, on_records)
        final = manifest.consolidate(config.output)
        result.seconds = time.perf_counter() - started
        storage.write_bytes(storage.join(config.output, manifest.SUMMARY_FILE),
                            json.dumps(result.as_dict(), indent=2, default=str).encode())
        _log_outcome(result, final)
    print(result.summary(), flush=True)
    return result


def _execute(ds: ray.data.Dataset, result: BackfillResult, on_records=None) -> None:
    """Stream the records back (Ray Data shows its progress meanwhile) and time the stages."""
    t = time.perf_counter()
    for records in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        result.tally.add(records)
        if on_records is not None:
            on_records(records)
    result.pipeline_seconds = time.perf_counter() - t
    result.startup_seconds = (result.tally.first_at or t) - t
    result.operators = operator_times(ds.stats())


def operator_times(stats: str) -> list[tuple[str, float]]:
    """(operator, seconds) from Ray Data's stats text ("Operator 3 X: ... produced in 1.2s")."""
    pattern = re.compile(r"^Operator \d+ (.+?): .* in ([\d.]+)s", re.MULTILINE)
    return [(name, float(sec)) for name, sec in pattern.findall(stats)]


# --------------------------------------------------------------------------- MLflow


@contextmanager
def _tracking_run(config: BackfillConfig, model, target: Target) -> Iterator[str]:
    """One MLflow run per backfill: parameters and lineage up front, outcomes at the end."""
    import mlflow

    from . import registry

    experiment_id = registry.ensure_experiment(config.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{config.kind}-{model.name}-v{model.version}") as run:
        mlflow.set_tags({"backdrop.kind": config.kind, "backdrop.model_name": model.name,
                         "backdrop.model_version": str(model.version), "backdrop.model_ref": config.model,
                         "backdrop.catalog": config.catalog, "backdrop.output": config.output})
        params = {k: v for k, v in asdict(config).items() if k not in ("experiment", "kind")}
        params.update(model_name=model.name, model_version=model.version, params_hash=target.params_hash)
        mlflow.log_params({k: ",".join(v) if isinstance(v, tuple) else v for k, v in params.items()})
        yield run.info.run_id


def _log_outcome(result: BackfillResult, final: pa.Table) -> None:
    import mlflow

    mlflow.log_metrics(result.metrics())
    mlflow.log_dict(result.as_dict(), "summary.json")
    for category, sheet in category_sheets(final, result.plan.categories).items():
        mlflow.log_image(sheet, f"gallery/{category}.png")


def category_sheets(records: pa.Table, categories: list[str], per_category: int = SHEET_IMAGES) -> dict:
    """One contact sheet per category from the manifest's ok rows (a gallery of the output)."""
    from .gallery import contact_sheet
    from .imaging import decode_image

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


# --------------------------------------------------------------------------- entry points


def prepare_job(args, start_ray: bool = True) -> None:
    """Logging, the tracking URI and Ray, in that order (workers inherit the URI)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "fsspec", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if start_ray:
        init_ray(args.ray_address, args.num_cpus)
