"""The review gallery: the outputs automatic QA flagged, on one HTML page a person can scan.

At catalog scale nobody looks at every image; the manifest's ``qa_passed = false`` records are
the ones worth a look. After a run, ``review/index.html`` under the output (and the same page in
the run's MLflow artifacts, ``review/``) shows each flagged output's image with its product,
placement, kept candidate and every candidate's seed and scores. Only the kept candidate's
pixels exist (the others were scored and dropped, never written), so the others appear as their
scores; their seeds regenerate them exactly. The page is replaced every run and covers the whole
output's latest records, not only this run's.
"""

from __future__ import annotations

import html
import json
import logging
import os

import pyarrow as pa
import pyarrow.compute as pc

from .. import storage
from .records import OK

log = logging.getLogger(__name__)

REVIEW_DIR = "review"
MAX_SHOWN = 200  # flagged outputs on the page (the manifest lists every one)
COMPONENTS = ("qa_score", "category_fit", "seam", "leak", "reference")


def flagged(records: pa.Table) -> list[dict]:
    """The latest ok records that QA flagged, worst first."""
    if records.num_rows == 0 or "qa_passed" not in records.column_names:
        return []
    mask = pc.and_(pc.equal(records["status"], OK), pc.equal(pc.fill_null(records["qa_passed"], True), False))
    rows = records.filter(mask).to_pylist()
    return sorted(rows, key=lambda r: (r["qa_score"] if r["qa_score"] is not None else 0.0, r["product_id"]))


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def render(rows: list[dict], total_scored: int, image_names: list[str], total_flagged: int) -> str:
    """The page's HTML (every value escaped: product ids and categories are catalog data)."""
    cards = []
    for row, name in zip(rows, image_names):
        candidates = json.loads(row["candidates_json"] or "[]")
        lines = "".join(
            f"<tr{' class=kept' if c.get('kept') else ''}><td>{'kept' if c.get('kept') else ''}</td>"
            f"<td>{_fmt(c.get('seed'))}</td>"
            + "".join(f"<td>{_fmt((c.get('scores') or {}).get(k))}</td>" for k in COMPONENTS)
            + f"<td>{_fmt(c.get('device_seconds'))}</td></tr>" for c in candidates)
        cards.append(
            f"<figure><img src=\"{html.escape(name)}\" alt=\"{html.escape(row['product_id'])}\">"
            f"<figcaption><b>{html.escape(row['product_id'])}</b> · {html.escape(row['category'] or '')} · "
            f"{html.escape(row['placement'] or '')} · qa_score {_fmt(row['qa_score'])}"
            f"<table><tr><th></th><th>seed</th>" + "".join(f"<th>{k}</th>" for k in COMPONENTS)
            + f"<th>device-s</th></tr>{lines}</table></figcaption></figure>")
    shown = f" (the {len(rows)} lowest shown)" if len(rows) < total_flagged else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>backdrop review</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1rem 2rem}figure{display:inline-block;vertical-align:top;"
        "margin:.5rem;padding:.5rem;border:1px solid #ccc;border-radius:6px}img{max-height:256px;display:block}"
        "table{font-size:.8rem;border-collapse:collapse}td,th{padding:0 .4rem;text-align:right}"
        "tr.kept{font-weight:bold}</style></head><body>"
        f"<h1>Flagged for review</h1><p>{total_flagged} of {total_scored} scored outputs did not pass QA"
        f"{shown}. Every candidate's seed and scores; the kept one in bold.</p>"
        + "".join(cards) + "</body></html>")


def write_review(output: str, records: pa.Table, staging: str | None = None, local_dir: str | None = None) -> int:
    """Write ``review/index.html`` and its PNGs under ``output`` (and into ``local_dir`` for the
    MLflow run); returns how many outputs were flagged. Nothing is written when no output of
    the manifest was scored (a model without a QA scorer)."""
    if records.num_rows == 0 or "qa_passed" not in records.column_names:
        return 0
    scored = int(pc.sum(pc.is_valid(records["qa_passed"])).as_py() or 0)
    if not scored:
        return 0
    rows = flagged(records)
    shown, names = [], []
    for i, row in enumerate(rows[:MAX_SHOWN]):
        try:
            data = storage.read_bytes(row["output_uri"])
        except Exception as e:  # noqa: BLE001 - a review page is best effort; the manifest has the rest
            log.warning("review: cannot read %s: %s", row["output_uri"], e)
            continue
        name = f"{i:04d}{os.path.splitext(row['output_uri'])[1] or '.png'}"
        _put(output, local_dir, name, data, staging)
        shown.append(row)
        names.append(name)
    _put(output, local_dir, "index.html", render(shown, scored, names, len(rows)).encode(), staging)
    return len(rows)


def _put(output: str, local_dir: str | None, name: str, data: bytes, staging: str | None) -> None:
    storage.write_bytes(storage.join(output, REVIEW_DIR, name), data, staging=staging)
    if local_dir is not None:
        with open(os.path.join(local_dir, name), "wb") as f:
            f.write(data)
