"""A row's input fingerprint: everything besides the model and the parameters that decides its pixels.

The fingerprint hashes the row's category, prompt, the URIs of its image, mask, reference and
reference mask, and, for each object, a *cheap* identity of its current content from one
stat / HEAD (``fsspec`` ``info``): the ETag on S3 (an MD5 of the bytes for single-part
uploads, a new value for every overwrite), size + mtime + inode on local disk. A missing
object hashes as ``missing``.

Why metadata and not the bytes: the nightly planner must fingerprint every row that is
otherwise done, on the driver, before any work is scheduled; reading every input there would
move the whole catalog's pixels through one process each night. A stat is one small request.
The price: an edit that keeps a local file's size, mtime and inode is not seen (tools that
write files update mtime), and a ``touch`` regenerates a row needlessly.

Why the load stage computes it too: the record must carry the fingerprint of the inputs it
was made from, and the load stage is where they were read. It takes each object's identity
from the read itself (``storage.read_object``: the fstat of the open file, the ETag the GET
was conditioned on), so an input replaced between a stat and the read can never be recorded
with the new identity and the old pixels. Both call :func:`of_row` (the same identity format,
``storage.identity``), so the planner and the records always agree on the rule.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

from .. import storage
from ..brands import StylePins

URI_FIELDS = ("image_uri", "mask_uri", "reference_uri", "reference_mask_uri")
STAT_THREADS = 16  # S3 HEADs are latency-bound: a few in flight keep a large plan fast


def object_identity(uri: str | None) -> str | None:
    """ETag (S3) or size + mtime + inode (local) of ``uri``; ``missing`` when there is no such
    object, ``unreadable:<error>`` when the URI cannot even be asked about (a malformed bucket
    name, an unknown scheme, a NUL byte...). Never raises: one bad URI must not abort the batch
    or the nightly plan it sits in; the load stage then fails that row with its reason."""
    if not uri:
        return None
    try:
        fs, path = storage.filesystem(uri)
        info = fs.info(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except Exception as e:  # noqa: BLE001 - botocore's ParamValidationError, ValueError, OSError, ...
        return f"unreadable:{type(e).__name__}"
    return storage.identity(info)


def input_uris(row: dict) -> dict[str, str | None]:
    """The row's input URIs by field, as they are used: a reference mask without a reference
    is ignored (as ``inputs.fetch_product`` ignores it)."""
    uris = {f: row.get(f) or None for f in URI_FIELDS}
    if not uris["reference_uri"]:
        uris["reference_mask_uri"] = None
    return uris


def of_row(row: dict, read: dict[str, str] | None = None, styles: StylePins | None = None) -> str:
    """The fingerprint of one catalog row (see the module docstring). ``read`` maps a URI to
    the identity of the bytes actually read from it (``storage.read_object``), which wins over
    a stat: the record then names exactly the inputs its pixels came from. A row with a
    ``brand_style`` adds the kit version its run pinned (``styles``), so a kit moved to a new
    version makes its rows ``input_changed``; rows without one hash as they always did."""
    uris = input_uris(row)
    read = read or {}
    blob = {"category": row.get("category"), "prompt": row.get("prompt") or None, "uris": uris,
            "objects": {f: read.get(u) or object_identity(u) for f, u in uris.items()}}
    if row.get("brand_style"):
        blob["style"] = (styles or StylePins()).label(row["brand_style"])
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def of_rows(rows: list[dict], styles: StylePins | None = None) -> list[str]:
    """Fingerprints of many rows, stat calls overlapped (the planner's bulk path)."""
    if len(rows) < 8:
        return [of_row(r, styles=styles) for r in rows]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        return list(pool.map(lambda r: of_row(r, styles=styles), rows))
