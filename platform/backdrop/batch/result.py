"""What a backfill did: the driver's counters (:class:`Tally`) and the run's result, with the
summary it prints, the metrics it logs and its cost. No Ray and no torch here."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from ..errors import LOAD, SELECT
from .config import BackfillConfig
from .plan import Plan
from .records import OK


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
