"""What a run will do, decided on the driver before any pixel moves.

Every catalog row in scope is classified against the output's manifest
(:data:`~backdrop.batch.manifest.REASONS`): new, failed last time, made by another model or
other parameters, or done. The driver keeps counters and the ids of rows already done (those
the pipeline skips), never the catalog. No Ray and no torch here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from ..catalog import iter_catalog, normalize_rows
from ..categories import normalize
from . import manifest
from .config import RowSelection
from .manifest import DONE, Target


@dataclass
class Plan:
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

    def restrict(self, categories) -> "Plan":
        """The part of this plan that covers ``categories`` (a nightly run's model group)."""
        wanted = {normalize(c) for c in categories}
        return replace(self, counts=Counter({k: n for k, n in self.counts.items() if normalize(k[0]) in wanted}))

    def todo_in(self, categories) -> int:
        return self.restrict(categories).todo

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
