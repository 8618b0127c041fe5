"""The manifest of a generation job's output: every attempt is a record, the latest one is the truth.

Layout under a job's output (a local directory or an ``s3://`` prefix)::

    images/<run>/<category>/<product_id>.<ext>  generated images (keys by :mod:`.keys`, never outside;
                                           ``<product_id>@16-9.<ext>`` on a placement); ``<run>`` is
                                           the writing run's lease namespace, ``e<epoch>-<token>``
    review/index.html                      the outputs QA flagged, with their candidates (:mod:`.review`)
    manifest/parts/<run>/part-<uuid>.parquet  the records of one finished batch (append-only)
    manifest.parquet                       the latest record per (product_id, placement) (consolidated)
    rejected.parquet                       rows the last plan refused (duplicate / missing id)
    summary.json                           the last run's summary
    _lease.json                            the live run's lease (:mod:`.lease`)
    _incomplete/<run>/                     a run's temporary files (its own, swept when it is dead)

The write order keeps the manifest true at every instant: a batch's images are written (each
atomically) before its part file (atomically too), so a record never points at a missing or
partial image. A run killed at any moment leaves at worst images without records (made again
on resume, with the same pixels: seeds are per product) and, on local disk, the temporary
files of interrupted writes in its own ``_incomplete/<run>/``, which the next lease holder
removes. Consolidation writes
``manifest.parquet`` before it deletes the parts it merged, so a crash in between leaves only
duplicates, which :func:`latest` folds away.

**Fenced** (:mod:`.lease`). A run writes its images and parts only under its own namespace, and
consolidates the parts it read when it planned (``Plan.parts``: the work of earlier runs, done
while they held the lease) plus its own; anything else in ``manifest/parts`` was written by a
run that had lost the lease, and is deleted unread. :func:`latest` ranks records by
``lease_epoch`` before ``created_at``, so neither a stale writer nor a skewed clock can make an
older attempt win. After consolidating, :func:`prune_images` deletes the images no record
names any more (superseded outputs, a stale writer's).

No Ray and no torch here: the driver, the nightly planner and tests all read manifests the
same way.

**A record is one (product, placement).** Its identity is ``product_id`` and ``placement``
(``photo`` when the run had no placements; records written before placements existed read as
``photo``): latest, classify, resume and the nightly plan all work per record, and
:func:`record_key` is the one string that names it.

**A failed attempt never hides the last good output.** The manifest keeps one record per
product and placement: the latest attempt, so ``rows = ok + failed`` always holds. A failed attempt keeps
``output_uri`` null (this attempt made nothing) but ``last_good_uri`` points at the product's
last ok image, which a failure never deletes or overwrites; :func:`latest` carries it forward.
Such a row is *stale*: it shows an older image than it should; :func:`stale_count` counts
them for the nightly report. Rows refused before any work (duplicate or missing product_id)
have no manifest key; they are counted failed in the run's summary and listed in
``rejected.parquet``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .. import storage
from .keys import PHOTO
from .lease import epoch_of
from .records import BOOL_COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, MANIFEST_COLUMNS, OK

PARTS_DIR = "manifest/parts"
MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "summary.json"
REJECTED_FILE = "rejected.parquet"

SCHEMA = pa.schema([(name, pa.int64() if name in INT_COLUMNS else pa.float64() if name in FLOAT_COLUMNS
                      else pa.bool_() if name in BOOL_COLUMNS else pa.string()) for name in MANIFEST_COLUMNS])
KEY_SEP = "\x1f"  # never in a placement name, so a key splits back at its last separator


def record_key(product_id: str, placement: str | None = PHOTO) -> str:
    """A record's identity as one string: the product_id itself for the photo (so manifests
    written before placements keep their keys), ``<product_id>\\x1f<placement>`` otherwise (and
    for the photo of an id that holds the separator itself). One-to-one: a key without the
    separator is a photo, any other splits at its last separator."""
    if placement in (None, "", PHOTO):
        return product_id if KEY_SEP not in product_id else f"{product_id}{KEY_SEP}{PHOTO}"
    return f"{product_id}{KEY_SEP}{placement}"


def record_key_column(product_ids, placements) -> pa.Array:
    """``record_key`` over whole columns, in Arrow: the one vectorised form, used by the
    pipeline's skip filter and the manifest's index."""
    ids, placement = pa.array(product_ids, pa.string()), pa.array(placements, pa.string())
    photo = pc.or_(pc.is_null(placement), pc.is_in(placement, value_set=pa.array(["", PHOTO])))
    bare = pc.and_(photo, pc.invert(pc.match_substring(ids, KEY_SEP)))
    placement = pc.if_else(photo, pa.scalar(PHOTO), placement)
    return pc.if_else(bare, ids, pc.binary_join_element_wise(ids, placement, KEY_SEP))


def record_keys(product_ids, placements) -> np.ndarray:
    return np.array(record_key_column(product_ids, placements).to_pylist(), dtype=object)

# Why a catalog row needs (or does not need) generating, relative to a target.
NEW, FAILED, MODEL_CHANGED, PARAMS_CHANGED, DONE = "new", "failed", "model_changed", "params_changed", "done"
INPUT_CHANGED = "input_changed"  # ok with this model and params, but an input (bytes, prompt, category) changed
DUPLICATE, MISSING_ID = "duplicate", "missing_id"  # refused by the planner: failed without any work
REASONS = (NEW, FAILED, MODEL_CHANGED, PARAMS_CHANGED, INPUT_CHANGED, DONE, DUPLICATE, MISSING_ID)
REJECTED = (DUPLICATE, MISSING_ID)


def manifest_uri(output_root: str) -> str:
    return storage.join(output_root, MANIFEST_FILE)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_part(output_root: str, records: list[dict], staging: str | None = None, run: str | None = None) -> str:
    """Append one batch's records as a new part file (atomic) in run ``run``'s namespace; returns its URI."""
    uri = storage.join(output_root, PARTS_DIR, *([run] if run else []), f"part-{uuid.uuid4().hex}.parquet")
    storage.write_bytes(uri, parquet_bytes(pa.Table.from_pylist(records, schema=SCHEMA)), staging=staging)
    return uri


def part_paths(output_root: str) -> tuple[str, ...]:
    """Every part file now under ``output_root`` (any run's namespace, and the flat layout of
    runs before fencing), as filesystem paths."""
    fs, parts_dir = storage.filesystem(storage.join(output_root, PARTS_DIR))
    try:
        found = fs.find(parts_dir)
    except FileNotFoundError:
        return ()
    return tuple(sorted(p for p in found if p.endswith(".parquet") and storage.TMP_MARKER not in p.rsplit("/", 1)[-1]))


def _part_epoch(path: str) -> int:
    """The lease epoch of the run that wrote a part (0: before fencing)."""
    return epoch_of(path.rsplit("/", 2)[-2]) or 0


def _sources(output_root: str, parts: tuple[str, ...] | None = None) -> tuple[object, list[str], list[str]]:
    """(pyarrow filesystem, consolidated manifest path if any, part paths: ``parts`` or all)."""
    fs, _ = storage.filesystem(output_root)
    main = storage.filesystem(manifest_uri(output_root))[1]
    consolidated = [main] if fs.exists(main) else []
    return storage.pyarrow_filesystem(output_root)[0], consolidated, list(part_paths(output_root) if parts is None
                                                                          else parts)


def read_records(output_root: str, columns: list[str] | None = None, parts: tuple[str, ...] | None = None) -> pa.Table:
    """Every record under ``output_root``: the consolidated manifest plus all parts (or ``parts``)."""
    fs, consolidated, parts = _sources(output_root, parts)
    paths = consolidated + parts
    if not paths:
        empty = SCHEMA.empty_table()
        return empty.select(columns) if columns else empty
    # An explicit schema reads older files too (a column they lack comes back as nulls).
    return pads.dataset(paths, schema=SCHEMA, filesystem=fs, format="parquet").to_table(columns=columns)


def latest(records: pa.Table) -> pa.Table:
    """The most recent record of each (product_id, placement), with ``last_good_uri`` carried
    forward from that record's last ok one. Most recent is the highest ``lease_epoch`` (a later
    holder's record wins, whatever the writers' clocks), then the latest ``created_at`` (ISO
    8601 UTC: it sorts) within one run."""
    if records.num_rows == 0:
        return records
    df = records.to_pandas()
    df["_key"] = record_keys(df["product_id"], df["placement"] if "placement" in df.columns else [PHOTO] * len(df))
    if "placement" in df.columns:
        df["placement"] = df["placement"].fillna(PHOTO)
    df["_epoch"] = df["lease_epoch"].fillna(0) if "lease_epoch" in df.columns else 0
    df = df.sort_values(["_epoch", "created_at"], kind="stable").drop(columns="_epoch")
    if "last_good_uri" in df.columns:
        good = df["output_uri"].where(df["status"] == OK, df["last_good_uri"])
        df["last_good_uri"] = good.groupby(df["_key"], sort=False).ffill()
    df = df.drop_duplicates("_key", keep="last").drop(columns="_key")
    order = ["category", "product_id"] + (["placement"] if "placement" in df.columns else [])
    df = df.sort_values(order, kind="stable")
    return pa.Table.from_pandas(df, schema=records.schema, preserve_index=False)


def consolidate(output_root: str, staging: str | None = None, adopted: tuple[str, ...] | None = None,
                run: str | None = None) -> pa.Table:
    """Fold parts into ``manifest.parquet`` (latest record per product) and drop them.

    Only the output's lease holder may call this (:mod:`.lease`): it rewrites the manifest.
    With ``run`` (the holder's namespace) the parts folded in are ``adopted`` (those the run's
    plan read) and the run's own; any other part of an older epoch is a fenced writer's and is
    deleted unread. Without it, every part is folded in.
    """
    now = part_paths(output_root)
    if run is None:
        used, fenced = list(now), []
    else:
        mine, adopted_set = f"/{run}/", set(adopted or ())
        used = [p for p in now if p in adopted_set or mine in p]
        fenced = [p for p in now if p not in used and _part_epoch(p) < (epoch_of(run) or 0)]
    fs, _ = storage.filesystem(output_root)
    if not used and not fenced and fs.exists(storage.filesystem(manifest_uri(output_root))[1]):
        return read_records(output_root, parts=())
    table = latest(read_records(output_root, parts=tuple(used)))
    storage.write_bytes(manifest_uri(output_root), parquet_bytes(table), staging=staging)
    _remove(output_root, used + fenced, under=storage.filesystem(storage.join(output_root, PARTS_DIR))[1])
    return table


def _remove(output_root: str, paths: list[str], under: str) -> None:
    """Delete files; on local disk also the folders below ``under`` that they leave empty."""
    if not paths:
        return
    fs, _ = storage.filesystem(output_root)
    fs.rm(paths)
    if storage.is_remote(output_root):
        return  # an object store has no folders
    stop = under.rstrip("/")
    folders = {os.path.dirname(p) for p in paths}
    while folders:
        folder = max(folders, key=len)  # deepest first: a parent empties after its children
        folders.discard(folder)
        if folder.startswith(stop + "/"):
            try:
                os.rmdir(folder)  # only if empty
            except OSError:
                continue
            folders.add(os.path.dirname(folder))


def prune_images(output_root: str, records: pa.Table, run: str) -> int:
    """Delete the images under ``output_root`` that no record of the consolidated manifest
    names (as ``output_uri`` or ``last_good_uri``), except run ``run``'s own: superseded
    outputs and a fenced writer's. Only the lease holder calls this, after consolidating.
    Returns how many were deleted."""
    from .keys import IMAGES_DIR

    fs, images_dir = storage.filesystem(storage.join(output_root, IMAGES_DIR))
    try:
        present = fs.find(images_dir)
    except FileNotFoundError:
        return 0
    named = {storage.filesystem(u)[1] for col in ("output_uri", "last_good_uri")
             for u in records[col].to_pylist() if u} if records.num_rows else set()
    mine = f"{images_dir.rstrip('/')}/{run}/"
    debris = [p for p in present if p not in named and not p.startswith(mine)
              and storage.TMP_MARKER not in p.rsplit("/", 1)[-1]]
    _remove(output_root, debris, under=images_dir)
    return len(debris)


INDEX_COLUMNS = ["status", "model_name", "model_version", "params_hash", "input_fingerprint", "last_good_uri"]


def latest_index(output_root: str, parts: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The latest status, model, params and input fingerprint of every record, by :func:`record_key`."""
    cols = ["product_id", "placement", "category", "output_uri", "created_at", "lease_epoch", *INDEX_COLUMNS]
    df = latest(read_records(output_root, columns=cols, parts=parts)).to_pandas()
    return df.set_index(pd.Index(record_keys(df["product_id"], df["placement"]), dtype=object))[INDEX_COLUMNS]


def stale_count(records: pa.Table) -> int:
    """Products whose latest attempt failed while an older image of theirs is still served."""
    if records.num_rows == 0:
        return 0
    failed = pc.not_equal(records["status"], OK)
    return int(pc.sum(pc.and_(failed, pc.is_valid(records["last_good_uri"]))).as_py() or 0)


@dataclass(frozen=True)
class Target:
    """What a row's latest record must match to count as done."""

    model_name: str
    model_version: str
    params_hash: str


def classify(rows: pd.DataFrame, index: pd.DataFrame, target_of: Callable[[str], Target]) -> np.ndarray:
    """One reason from ``REASONS`` per row (``product_id``, ``category``, optional ``placement``;
    ``index`` by :func:`record_key`): why it needs work, or ``done``.

    With an ``input_fingerprint`` column in ``rows``, a row whose record was made from other
    inputs is ``input_changed``; a record without a fingerprint (written before fingerprints
    existed) is not compared, nor is a row whose fingerprint is null (not computed).
    """
    if rows.empty:
        return np.array([], dtype=object)
    placements = rows["placement"] if "placement" in rows.columns else [PHOTO] * len(rows)
    rec = index.reindex(record_keys(rows["product_id"], placements))
    targets = {c: target_of(c) for c in rows["category"].unique()}
    want = [rows["category"].map(lambda c, f=f: getattr(targets[c], f)).to_numpy()
            for f in ("model_name", "model_version", "params_hash")]
    status = rec["status"].to_numpy()
    moved = (rec["model_name"].to_numpy() != want[0]) | (rec["model_version"].to_numpy() != want[1])
    conditions = [pd.isna(status), status != OK, moved, rec["params_hash"].to_numpy() != want[2]]
    if "input_fingerprint" in rows.columns and "input_fingerprint" in rec.columns:
        have = rec["input_fingerprint"].reset_index(drop=True)
        now = rows["input_fingerprint"].reset_index(drop=True)
        conditions.append((have.notna() & now.notna() & (have != now)).to_numpy())
    return np.select(conditions, [NEW, FAILED, MODEL_CHANGED, PARAMS_CHANGED, INPUT_CHANGED][:len(conditions)],
                     default=DONE).astype(object)
