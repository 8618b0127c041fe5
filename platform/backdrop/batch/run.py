"""Catalog backfill: every catalog row becomes one generated ad image and one manifest record
per placement (``--placements``; the photo as it is without), each with its device-seconds and,
when the model carries a QA scorer, its QA scores (best of ``--candidates``).

The driver plans (:mod:`.plan`), runs the stages (:mod:`.stages`) on Ray Data or in this
process, tallies the records streaming back, consolidates the manifest and keeps one MLflow
run per backfill with lineage and per-category contact sheets.

**Idempotent and resumable.** Before anything runs, the driver compares the catalog with the
manifest (:mod:`.manifest`): a row whose latest record is ``ok`` with the same model version
and parameters hash is skipped, everything else (new, failed, made by another model or other
parameters) is generated. Every finished batch appends a part file after its images, so a
run killed at any moment (driver or actor) and started again finishes the remaining rows; at
the end, ``manifest.parquet`` holds exactly one record, the latest, per product.

**Failures are data.** Per-row failures are caught inside the stages and written as ``failed``
records with their stage, code and message; the run exits non-zero only above
``max_failure_rate``. (Ray Data's ``max_errored_blocks`` would drop whole blocks, so it is not
used.)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

import pyarrow as pa

from .. import registry, runtime, storage
from ..quality.qa import require_scorer
from . import manifest
from .config import BackfillConfig
from .lease import Lease
from .manifest import Target
from .plan import Plan, plan_rows, write_rejected
from .records import RunContext, params_hash
from .result import BackfillResult, Tally
from .stages import GeneratorActor, actor_stage, build_dataset, cpu_threads, generator_kwargs, run_local
from .tracking import log_outcome, tracking_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    """The model a run uses and the target its records must match (resolved once per run)."""

    model: registry.ResolvedModel
    pinned: str  # models:/NAME/VERSION (or the path): what the generators load
    info: runtime.ModelInfo
    target: Target


def resolve_target(config: BackfillConfig) -> Resolved:
    """Resolve a config's model once and hash its parameters into the records' target."""
    model = registry.resolve(config.model)
    pinned = f"models:/{model.name}/{model.version}" if config.model.startswith("models:/") else model.path
    info = runtime.read_model_info(model.path)
    require_scorer(config.candidates, info.qa_scorer, config.model)
    config = with_model_defaults(config, info)
    target = Target(model.name, str(model.version),
                    params_hash(config.inference(), config.output_config(), config.seed, info.resolution,
                                config.candidates, config.qa_threshold))
    return Resolved(model, pinned, info, target)


def with_model_defaults(config: BackfillConfig, info: runtime.ModelInfo) -> BackfillConfig:
    """``config`` with what it left to the model filled in from it (the scheduler saved with the
    model), so records, their parameter hash and the run say what was actually used."""
    return config if config.scheduler else replace(config, scheduler=info.scheduler)


def output_lease(config: BackfillConfig) -> Lease:
    """Take ``config.output``'s lease (:mod:`.lease`): one writer per output, or ``OutputBusyError``."""
    return Lease(config.output, config.kind, config.lease_ttl_s).acquire(config.lease_wait_s)


def run_backfill(config: BackfillConfig, generator_cls: type | None = None,
                 on_records: Callable[[pa.Table], None] | None = None,
                 resolved: Resolved | None = None, plan: Plan | None = None,
                 lease: Lease | None = None) -> BackfillResult:
    """Backfill ``config.catalog`` into ``config.output``; see the module docstring.

    ``generator_cls`` replaces ``GeneratorActor`` (same constructor): the benchmark isolates the
    platform's overhead with a no-op generator. ``on_records`` sees each batch's records as they
    stream back to the driver (progress hooks, timing). A caller that has resolved the model and
    planned already (the nightly run) passes both in, so nothing is done twice, and the output's
    ``lease`` it took before planning; otherwise the run takes it here, before it plans, since
    a plan is only true while no one else writes the manifest.
    """
    if lease is None:
        with output_lease(config) as own:
            return run_backfill(config, generator_cls, on_records, resolved, plan, own)
    started = time.perf_counter()
    resolved = resolved or resolve_target(config)
    config = with_model_defaults(config, resolved.info)
    model, target = resolved.model, resolved.target
    planned_here = plan is None
    if plan is None:
        plan = plan_rows(config.catalog, config.output, config.selection(), lambda _: target,
                         config.placement_names)
    log.info("plan: %d rows in scope, %d already done, %d refused, %d to generate",
             plan.total, plan.skipped, plan.refused, plan.todo)

    with tracking_run(config, model, target) as run_id:
        ctx = RunContext(config.output, model.name, str(model.version), target.params_hash, config.seed,
                         config.output_config(), run_id, lease.staging, lease.namespace)
        result = BackfillResult(config, model.name, str(model.version), target.params_hash, run_id, plan, Tally())
        if planned_here:
            write_rejected(config.output, plan, run_id, lease.staging)
        if plan.todo:
            try:
                _execute(config, resolved, plan, ctx, result, generator_cls, on_records)
            except Exception:
                lease.check()  # a lost lease is the reason (a stage raised it, wrapped by Ray): say so
                raise
        lease.check()  # a run that lost its lease must not rewrite the manifest
        final = manifest.consolidate(config.output, lease.staging, plan.parts, lease.namespace)
        manifest.prune_images(config.output, final, lease.namespace)
        result.stale = manifest.stale_count(final)
        result.seconds = time.perf_counter() - started
        storage.write_bytes(storage.join(config.output, manifest.SUMMARY_FILE),
                            json.dumps(result.as_dict(), indent=2, default=str).encode(), staging=lease.staging)
        log_outcome(result, final, lease.staging)
    print(result.summary(), flush=True)
    return result


def _execute(config: BackfillConfig, resolved: Resolved, plan: Plan, ctx: RunContext, result: BackfillResult,
             generator_cls: type | None, on_records) -> None:
    """Run the stages (Ray Data, or in this process), stream the records back and time them."""
    t = time.perf_counter()
    if config.executor == "local":
        stage_kwargs = generator_kwargs(config, resolved.pinned, registry.tracking_uri(),
                                        cpu_threads(config.threads_per_actor, 1), 1)
        batches, stats = run_local(config, plan, ctx, resolved.info.categories,
                                   (generator_cls or GeneratorActor)(**stage_kwargs)), None
    else:
        from ..cluster import init_ray

        init_ray()  # a no-op when the job (or the caller) has started Ray already
        stage = actor_stage(config, resolved.pinned, registry.tracking_uri(), generator_cls)
        ds = build_dataset(config, plan, ctx, resolved.info.categories, stage)
        batches, stats = ds.iter_batches(batch_size=None, batch_format="pyarrow"), ds
    progress = Progress(plan.todo)
    for records in batches:
        result.tally.add(records)
        if on_records is not None:
            on_records(records)
        progress.update(result.tally.rows)
    result.pipeline_seconds = time.perf_counter() - t
    result.startup_seconds = (result.tally.first_at or t) - t
    result.operators = operator_times(stats.get_stats_summary()) if stats is not None else []


class Progress:
    """The run's one progress line, at most every ``every_s`` seconds and at the end: rows done,
    rate and ETA (Ray Data's own progress bars are off in non-TTY logs: ``cluster.init_ray``)."""

    def __init__(self, total: int, every_s: float = 10.0):
        self.total, self.every_s = total, every_s
        self.started = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        log.info("%d/%d rows done (%.0f%%), %.2f rows/s, ETA %s", done, self.total,
                 100 * done / max(self.total, 1), rate, "-" if eta == float("inf") else f"{eta:.0f} s")


def operator_times(summary) -> list[tuple[str, float]]:
    """(operator, seconds) of each Ray Data operator, from its stats summary (``DatasetStatsSummary``:
    the operators of the dataset and of the datasets it was built from, as Ray counts them)."""
    out, stack = [], [summary]
    while stack:
        node = stack.pop()
        out[:0] = [(op.operator_name, float(op.time_total_s)) for op in node.operators_stats]
        stack.extend(node.parents)
    return out
