"""Where a product's image goes under an output root: one rule, documented here, that never escapes.

A catalog's ``product_id`` and ``category`` are data from outside: ``../../etc/x``, ``/tmp/x``,
``SKU.tmp-1``, ``a/b``, 300 characters, ``Sku`` next to ``SKU`` on a case-insensitive disk.
Each becomes one path *segment* by this rule:

* kept as it is when it is already plain: 1..100 characters of ``[a-z0-9_-]``, starting with a
  letter or digit (``heldout-mug-00001`` stays ``heldout-mug-00001``);
* otherwise encoded as ``<slug>~<hash>``: ``slug`` is a readable, lower-case ASCII version of
  the value (``[a-z0-9_-]``, at most 48 characters, ``_`` when nothing readable is left) and
  ``hash`` the first 20 hex digits (80 bits) of the SHA-256 of its exact UTF-8 bytes.

Why this holds:

* *never leaves the root*: a segment holds no ``/``, ``\\``, ``.`` or NUL, so it is never ``..``,
  absolute, hidden or a temp name (``.tmp-``), and the key is ``images/<run>/<category>/<id>.<ext>``
  (``<run>``: the writing run's lease namespace, ``e<epoch>-<token>``, a plain segment too);
* *one file per placement*: an output on an ad placement (``batch --placements``) is
  ``images/<category>/<id>@<placement>.<ext>``, the placement's canonical name with ``:`` as
  ``-`` (``16:9`` -> ``@16-9``, ``300x250`` -> ``@300x250``). ``@`` never occurs in a segment,
  so a placement's key never equals another product's; ratio and slot names differ in ``-``
  vs ``x``. The product as photographed (placement ``photo``, the default) keeps the plain key;
* *unique, also on case-insensitive disks*: plain segments are lower case and have no ``~``, so
  they differ from every encoded one and from each other whenever the ids differ; encoded
  segments of distinct values differ in their hash (a collision needs 2^40 ids by birthday);
* *stable*: a pure function of the value and the run (no salt, no process state), so a row
  maps to one path within a run (a resumed batch overwrites its own image, never another run's); the manifest keeps the original id and the output's URI.

Names stay under 160 bytes, well inside every filesystem's 255-byte limit.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from .. import storage

IMAGES_DIR = "images"
MAX_PLAIN = 100
MAX_SLUG = 48
HASH_HEX = 20
_PLAIN = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{MAX_PLAIN - 1}}}")
_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def segment(value: str) -> str:
    """One safe path segment for ``value`` (see the module docstring for the rule)."""
    value = str(value)
    if _PLAIN.fullmatch(value):
        return value
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().lower()
    slug = _UNSAFE.sub("_", ascii_text).strip("_-")[:MAX_SLUG] or "_"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    return f"{slug}~{digest}"


PHOTO = "photo"  # the product as photographed: no placement, the key every output had before placements
_PLACEMENT = re.compile(r"[0-9]{1,6}[:x][0-9]{1,6}")


def placement_suffix(placement: str | None) -> str:
    """``""`` for the photo, else ``@<name>`` with ``:`` as ``-`` (only canonical names are accepted)."""
    if placement in (None, "", PHOTO):
        return ""
    if not _PLACEMENT.fullmatch(placement):
        raise ValueError(f"not a canonical placement name: {placement!r}")
    return "@" + placement.replace(":", "-")


def output_key(category: str, product_id: str, extension: str, placement: str | None = None,
               run: str | None = None) -> str:
    """The image's key relative to the output root:
    ``images/[<run>/]<category>/<product_id>[@<placement>].<ext>``; ``run`` is the writing run's
    lease namespace (:mod:`.lease`), itself a plain segment."""
    prefix = f"{IMAGES_DIR}/{segment(run)}" if run else IMAGES_DIR
    return f"{prefix}/{segment(category)}/{segment(product_id)}{placement_suffix(placement)}.{extension}"


def output_uri(output_root: str, category: str, product_id: str, extension: str, placement: str | None = None,
               run: str | None = None) -> str:
    return storage.join(output_root, *output_key(category, product_id, extension, placement, run).split("/"))
