"""What a run will do, decided on the driver before any pixel moves.

Every record a catalog row in scope becomes (one per placement) is classified against the output's manifest
(:data:`~backdrop.batch.manifest.REASONS`): new, failed last time, made by another model or
other parameters, made from inputs that changed since, or done; or refused outright (no
product_id, or a later occurrence of a duplicated one). The driver keeps counters and the ids
of records already done (their :func:`~backdrop.batch.manifest.record_key`: the pipeline skips them),
never the catalog. Counts are records: rows x placements, so ``total = ok + failed`` holds per
record; a refused row (duplicate or missing id) is refused once per placement. No Ray and no
torch here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import storage
from ..catalog import GENERATION_COLUMNS, iter_catalog, normalize_rows
from ..categories import normalize
from ..errors import DUPLICATE_ID as DUPLICATE_ID_CODE
from ..errors import MISSING_ID as MISSING_ID_CODE
from ..errors import SELECT
from ..brands import StylePins
from . import fingerprint, manifest
from .config import RowSelection
from .keys import PHOTO
from .manifest import DONE, DUPLICATE, MISSING_ID, REJECTED, Target, record_keys
from .records import OK


@dataclass
class Plan:
    counts: Counter = field(default_factory=Counter)  # (category, reason) -> records (rows x placements)
    done_keys: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))  # manifest.record_key
    scope_ids: pa.Array | None = None  # with a limit: exactly the rows in scope
    exclude_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))  # duplicated ids
    first_rows: pa.Table | None = None  # the first occurrence of each duplicated id (fed in separately)
    rejected: list[dict] = field(default_factory=list)  # records refused here: failed, never generated
    stale: int = 0  # records in scope whose latest attempt failed while an older image is still served
    placements: tuple[str, ...] = (PHOTO,)  # every row is one record per placement
    parts: tuple[str, ...] = ()  # the manifest parts this plan read: the run consolidates these and its own
    styles: StylePins = field(default_factory=StylePins)  # the brand style kits its rows name, pinned

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def skipped(self) -> int:
        return sum(n for (_, reason), n in self.counts.items() if reason == DONE)

    @property
    def refused(self) -> int:
        """Rows failed by the planner itself (duplicate or missing product_id)."""
        return sum(n for (_, reason), n in self.counts.items() if reason in REJECTED)

    @property
    def todo(self) -> int:
        return self.total - self.skipped - self.refused

    @property
    def categories(self) -> list[str]:
        return sorted({c for c, _ in self.counts})

    def restrict(self, categories) -> "Plan":
        """The part of this plan that covers ``categories`` (a nightly run's model group)."""
        wanted = {normalize(c) for c in categories}
        return replace(self, counts=Counter({k: n for k, n in self.counts.items() if normalize(k[0]) in wanted}),
                       rejected=[r for r in self.rejected if normalize(r["category"] or "") in wanted])

    def todo_in(self, categories) -> int:
        return self.restrict(categories).todo

    def format(self) -> str:
        """Rows per category and reason (what --dry-run prints)."""
        reasons = manifest.REASONS
        lines = [f"{'category':16s}" + "".join(f"{r:>15s}" for r in reasons) + f"{'to generate':>14s}"]
        for c in self.categories + ["(all)"]:
            n = {r: sum(v for (cc, rr), v in self.counts.items() if rr == r and c in (cc, "(all)")) for r in reasons}
            todo = sum(n.values()) - n[DONE] - sum(n[r] for r in REJECTED)
            lines.append(f"{c:16s}" + "".join(f"{n[r]:15d}" for r in reasons) + f"{todo:14d}")
        lines.append(f"stale outputs: {self.stale} (latest attempt failed; an older image is still served)")
        return "\n".join(lines)


def _in_scope(catalog: str, selection: RowSelection, columns: tuple[str, ...]) -> Iterator[pa.Table]:
    """The catalog's rows in scope (categories, then the first ``limit``), in catalog order."""
    left = selection.limit
    for table in iter_catalog(catalog, list(columns)):
        rows = selection.by_category(normalize_rows(table, columns))
        if left is not None:
            rows = rows.slice(0, left)
            left -= rows.num_rows
        yield rows
        if left == 0:
            break


def _duplicated_ids(catalog: str, selection: RowSelection) -> pa.Array:
    """Ids that occur more than once in scope: one pass over the id column, counted by Arrow."""
    chunks = [t["product_id"] for t in _in_scope(catalog, selection, ("product_id", "category"))]
    if not chunks:
        return pa.array([], pa.string())
    counts = pc.value_counts(pa.chunked_array([c for t in chunks for c in t.chunks], pa.string()))
    values, n = counts.field("values"), counts.field("counts")
    dup = pc.filter(values, pc.and_(pc.greater(n, 1), pc.is_valid(values)))
    return dup.cast(pa.string())


def plan_rows(catalog: str, output: str, selection: RowSelection, target_of: Callable[[str], Target],
              placements: tuple[str, ...] = (PHOTO,), styles: StylePins | None = None) -> Plan:
    """Classify every catalog row in scope against the manifest (``manifest.REASONS``).

    Two streaming passes over the catalog. The first counts ``product_id`` (Arrow) to find
    duplicated ids. The second classifies each row: no id -> ``missing_id``; the second and
    later occurrences of an id -> ``duplicate`` (both failed here, listed in ``rejected``);
    every other row against its latest record, and a row that would be ``done`` against its
    current input fingerprint (:mod:`.fingerprint`: one stat per input, only for those rows).
    The driver keeps counters, the done ids, the duplicated ids and their first rows, never
    the catalog.
    """
    parts = manifest.part_paths(output)  # exactly what the index reads, and later consolidates
    index = manifest.latest_index(output, parts)
    duplicated = _duplicated_ids(catalog, selection)
    dup_set = set(duplicated.to_pylist())
    plan = Plan(exclude_ids=duplicated, placements=tuple(placements), parts=parts, styles=styles or StylePins())
    done, scope, first, seen, position = [], [], [], set(), 0
    for rows in _in_scope(catalog, selection, GENERATION_COLUMNS):
        if selection.limit is not None:
            scope.extend(rows["product_id"].chunks)
        records = rows.to_pylist()
        keep = []
        for i, row in enumerate(records):
            pid, category = row["product_id"], row["category"] or ""
            if pid is None or not pid.strip():
                for placement in plan.placements:
                    plan.rejected.append(_rejected(row, position + i, MISSING_ID_CODE, "the row has no product_id",
                                                   placement))
                plan.counts[(category, MISSING_ID)] += len(plan.placements)
            elif pid in dup_set and pid in seen:
                for placement in plan.placements:
                    plan.rejected.append(_rejected(row, position + i, DUPLICATE_ID_CODE,
                                                   f"product_id {pid!r} occurs earlier in the catalog; the first "
                                                   "occurrence is generated", placement))
                plan.counts[(category, DUPLICATE)] += len(plan.placements)
            else:
                if pid in dup_set:
                    seen.add(pid)
                    first.append(row)
                keep.append(i)
        position += len(records)
        rows = rows.take(pa.array(keep, pa.int64()))
        _classify_into(plan, rows, index, target_of, done)
    plan.done_keys = pa.array(done, pa.string())
    if selection.limit is not None:
        plan.scope_ids = pa.chunked_array(scope, pa.string()).combine_chunks()
    if first:
        plan.first_rows = pa.Table.from_pylist(first, schema=pa.schema([(c, pa.string()) for c in GENERATION_COLUMNS]))
    return plan


def _classify_into(plan: Plan, rows: pa.Table, index, target_of, done: list) -> None:
    base = rows.select(["product_id", "category"]).to_pandas()
    n, k = len(base), len(plan.placements)
    # one record per (row, placement): row i's records are i, i + n, i + 2n, ...
    df = base.iloc[np.tile(np.arange(n), k)].reset_index(drop=True)
    df["placement"] = np.repeat(np.array(plan.placements, dtype=object), n)
    reasons = manifest.classify(df, index, target_of)
    candidates = np.flatnonzero(reasons == DONE)
    if len(candidates):
        # Only rows with a record that would be skipped need their inputs stat'ed: every other
        # record is generated anyway (and gets a fresh fingerprint from the load stage).
        stat = np.unique(candidates % n)
        per_row = np.full(n, None, dtype=object)
        per_row[stat] = fingerprint.of_rows(rows.take(pa.array(stat)).to_pylist(), plan.styles)
        reasons = manifest.classify(df.assign(input_fingerprint=np.tile(per_row, k)), index, target_of)
    if len(df):
        rec = index.reindex(record_keys(df["product_id"], df["placement"]))
        plan.stale += int(((rec["status"] != OK) & rec["status"].notna() & rec["last_good_uri"].notna()).sum())
    plan.counts.update(zip([c or "" for c in df["category"]], reasons))
    done.extend(record_keys(df["product_id"][reasons == DONE], df["placement"][reasons == DONE]).tolist())


def _rejected(row: dict, position: int, code: str, message: str, placement: str = PHOTO) -> dict:
    return {"product_id": row["product_id"], "category": row["category"], "catalog_row": position,
            "placement": placement, "error_stage": SELECT, "error_code": code, "error_message": message}


REJECTED_SCHEMA = pa.schema([("product_id", pa.string()), ("category", pa.string()), ("catalog_row", pa.int64()),
                             ("placement", pa.string()),
                             ("error_stage", pa.string()), ("error_code", pa.string()),
                             ("error_message", pa.string()), ("run_id", pa.string())])


def write_rejected(output: str, plan: Plan, run_id: str | None, staging: str | None = None) -> None:
    """``rejected.parquet``: the rows this plan refused, with their reasons (replaced every run)."""
    rows = [{**r, "run_id": run_id} for r in plan.rejected]
    storage.write_bytes(storage.join(output, manifest.REJECTED_FILE),
                        manifest.parquet_bytes(pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)), staging=staging)
