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
import os
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .. import registry, runtime, storage
from ..errors import LOAD, SELECT
from ..quality.qa import require_scorer
from . import manifest
from .config import BackfillConfig
from .lease import Lease
from .manifest import Target
from .plan import Plan, plan_rows, write_rejected
from .records import OK, RunContext, params_hash
from .stages import GeneratorActor, actor_stage, build_dataset, cpu_threads, generator_kwargs, run_local

log = logging.getLogger(__name__)

SHEET_IMAGES = 8


@dataclass
class Tally:
    """What the driver keeps of the records streaming back: counters only."""

    ok: Counter = field(default_factory=Counter)  # category -> records
    failed: Counter = field(default_factory=Counter)  # category -> records
    errors: Counter = field(default_factory=Counter)  # (stage, error code) -> records
    device_seconds: Counter = field(default_factory=Counter)  # category -> device-seconds of its outputs
    scored: int = 0  # outputs with a QA verdict
    flagged: int = 0  # ... that did not pass (qa_passed false): the review gallery
    first_at: float | None = None  # when the first records arrived (perf_counter)

    def add(self, records: pa.Table) -> None:
        self.first_at = self.first_at or time.perf_counter()
        names = ("category", "status", "error_stage", "error_code", "device_seconds", "qa_passed")
        for category, status, stage, code, seconds, passed in zip(*(records[c].to_pylist() for c in names)):
            (self.ok if status == OK else self.failed)[category] += 1
            if status != OK:
                self.errors[(stage, code)] += 1
            self.device_seconds[category] += seconds or 0.0
            if passed is not None:
                self.scored += 1
                self.flagged += not passed

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

    stale: int = 0  # products in the output whose latest attempt failed but an older image remains

    @property
    def refused(self) -> dict[tuple[str, str], int]:
        """(stage, code) -> rows the planner failed itself (duplicate or missing product_id)."""
        return dict(Counter((SELECT, r["error_code"]) for r in self.plan.rejected))

    @property
    def failed(self) -> int:
        return sum(self.tally.failed.values()) + self.missing + self.plan.refused

    @property
    def failure_rate(self) -> float:
        """Failed rows over the rows in scope (rows done earlier were ok, so reruns agree)."""
        return self.failed / self.plan.total if self.plan.total else 0.0

    @property
    def generated(self) -> int:
        """Rows that reached the generator (0 on a rerun of a finished backfill)."""
        return self.tally.rows - self.tally.failed_in(LOAD)

    @property
    def images_per_second(self) -> float:
        return sum(self.tally.ok.values()) / self.pipeline_seconds if self.pipeline_seconds else 0.0

    def exit_code(self) -> int:
        return 0 if self.failure_rate <= self.config.max_failure_rate else 1

    @property
    def device_seconds(self) -> float:
        """Device time of this run's outputs (every candidate counted; skipped records cost 0)."""
        return float(sum(self.tally.device_seconds.values()))

    def cost(self, seconds: float) -> float | None:
        """``seconds`` of device time at ``price_per_device_hour`` (None when no price is set)."""
        price = self.config.price_per_device_hour
        return seconds / 3600 * price if price else None

    def metrics(self) -> dict[str, float]:
        out = {"rows_in": self.plan.total, "rows_ok": self.ok, "rows_failed": self.failed,
               "rows_skipped": self.plan.skipped, "rows_generated": self.generated,
               "rows_refused": self.plan.refused, "rows_stale": self.stale,
               "images_written": sum(self.tally.ok.values()), "failure_rate": self.failure_rate,
               "images_per_s": self.images_per_second, "startup_s": self.startup_seconds,
               "pipeline_s": self.pipeline_seconds, "wall_s": self.seconds,
               "device_s": self.device_seconds, "qa_scored": self.tally.scored, "qa_flagged": self.tally.flagged}
        for category, seconds in sorted(self.tally.device_seconds.items()):
            out[f"device_s.{_metric_name(category)}"] = seconds
        if self.cost(1.0) is not None:
            out["cost"] = self.cost(self.device_seconds)
        return out

    def as_dict(self) -> dict:
        return {"config": asdict(self.config), "model_name": self.model_name, "model_version": self.model_version,
                "params_hash": self.params_hash, "run_id": self.run_id, "metrics": self.metrics(),
                "plan": {f"{c}/{r}": n for (c, r), n in sorted(self.plan.counts.items())},
                "device_seconds": {"total": self.device_seconds, **dict(sorted(self.tally.device_seconds.items()))},
                "price_per_device_hour": self.config.price_per_device_hour or None,
                "errors": {f"{s}/{code}": n for (s, code), n in sorted({**self.refused, **self.tally.errors}.items())},
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
            f"  {'select':10s}{self.plan.total:9d}{self.plan.todo:7d}{self.plan.refused:8d}   "
            f"{self.plan.skipped} already done with this model, params and inputs (skipped)"
            + "".join(f", {code} {n}" for (_, code), n in sorted(self.refused.items())),
            f"  {'load':10s}{t.rows:9d}{loaded:7d}{t.failed_in('load'):8d}   {reasons('load')}",
            f"  {'generate':10s}{loaded:9d}{generated:7d}{t.failed_in('generate'):8d}   {reasons('generate')}",
            f"  {'write':10s}{generated:9d}{sum(t.ok.values()):7d}{t.failed_in('write'):8d}   {reasons('write')}",
            f"  manifest: {self.plan.total} rows in scope = {self.ok} ok + {self.failed} failed "
            f"(failure rate {self.failure_rate:.1%}, max {self.config.max_failure_rate:.1%}); "
            f"{self.stale} stale (latest attempt failed, an older image is still served)"
            + (f"; records: catalog rows x {len(self.plan.placements)} placements "
               f"({', '.join(self.plan.placements)})" if len(self.plan.placements) > 1 else ""),
            f"  time: pipeline {self.pipeline_seconds:.1f}s ({self.images_per_second:.2f} images/s, first records "
            f"after {self.startup_seconds:.1f}s), whole run {self.seconds:.1f}s",
        ]
        lines.extend(self._cost_lines())
        if self.missing:
            lines.append(f"  ERROR: {self.missing} rows never came back from the pipeline (counted as failed)")
        if self.operators:
            lines.append("  Ray Data operators: " + ", ".join(f"{n} {s:.1f}s" for n, s in self.operators))
        return "\n".join(lines)


    def _cost_lines(self) -> list[str]:
        """Device-seconds per category and run (and what they cost at the configured price)."""
        def money(seconds: float) -> str:
            cost = self.cost(seconds)
            return "" if cost is None else f"  ~{cost:.4f} at {self.config.price_per_device_hour:g}/device-hour"

        written = sum(self.tally.ok.values())
        lines = [f"  {'cost':10s}{'outputs':>9s}{'device-s':>10s}{'per output':>12s}"]
        for category in sorted(set(self.tally.device_seconds) | set(self.tally.ok)):
            n, sec = self.tally.ok[category], self.tally.device_seconds[category]
            lines.append(f"  {category[:10]:10s}{n:9d}{sec:10.2f}{sec / n if n else 0.0:12.3f}{money(sec)}")
        lines.append(f"  {'(run)':10s}{written:9d}{self.device_seconds:10.2f}"
                     f"{self.device_seconds / written if written else 0.0:12.3f}{money(self.device_seconds)}")
        if self.tally.scored:
            lines.append(f"  QA: {self.tally.flagged} of {self.tally.scored} outputs flagged (qa_passed false; "
                         f"best of {self.config.candidates}); see review/index.html")
        return lines


def _metric_name(text: str) -> str:
    """An MLflow metric name part: letters, digits and ``_-.`` only."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))[:100] or "_"


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
    target = Target(model.name, str(model.version),
                    params_hash(config.inference(), config.output_config(), config.seed, info.resolution,
                                config.candidates, config.qa_threshold))
    return Resolved(model, pinned, info, target)


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
    model, target = resolved.model, resolved.target
    planned_here = plan is None
    if plan is None:
        plan = plan_rows(config.catalog, config.output, config.selection(), lambda _: target,
                         config.placement_names)
    log.info("plan: %d rows in scope, %d already done, %d refused, %d to generate",
             plan.total, plan.skipped, plan.refused, plan.todo)

    with _tracking_run(config, model, target) as run_id:
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
        _log_outcome(result, final, lease.staging)
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
    for records in batches:
        result.tally.add(records)
        if on_records is not None:
            on_records(records)
        log.info("%d/%d rows done", result.tally.rows, plan.todo)
    result.pipeline_seconds = time.perf_counter() - t
    result.startup_seconds = (result.tally.first_at or t) - t
    result.operators = operator_times(stats.stats()) if stats is not None else []


def operator_times(stats: str) -> list[tuple[str, float]]:
    """(operator, seconds) from Ray Data's stats text ("Operator 3 X: ... produced in 1.2s")."""
    pattern = re.compile(r"^Operator \d+ (.+?): .* in ([\d.]+)s", re.MULTILINE)
    return [(name, float(sec)) for name, sec in pattern.findall(stats)]


# --------------------------------------------------------------------------- MLflow


@contextmanager
def _tracking_run(config: BackfillConfig, model, target: Target) -> Iterator[str]:
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
        yield run.info.run_id


def _log_outcome(result: BackfillResult, final: pa.Table, staging: str | None = None) -> None:
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
