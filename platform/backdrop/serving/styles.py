"""Brand styles on the HTTP path: which kits a key may use, a short-lived cache of the version
a style points to, and the reference a request gets from its kit. No Ray and no HTTP here.

A style resolves through the registry at most once per ``ttl_s`` (an alias moved by ``backdrop
brand add`` is seen within it); the kit version's references are then held in memory
(``brands.load_kit``), so a styled request reads no image bytes at all, where an inline one
uploads and decodes its reference every time.
"""

from __future__ import annotations

from .. import brands
from ..errors import InvalidParameterError, StyleNotAllowedError
from ..scope import StyleScope
from .cache import TtlCache


class Styles:
    def __init__(self, scope: StyleScope, ttl_s: float = 2.0, max_cached: int = 256) -> None:
        self.scope, self.ttl_s = scope, ttl_s
        self._resolved: TtlCache[tuple[str, str]] = TtlCache(max_cached)

    def allowed(self, key_digest: str | None) -> list[dict]:
        """The kits ``key_digest`` may use (GET /v1/styles, the page's list)."""
        return [k for k in brands.list_kits() if self.scope.admits(k["name"], key_digest)]

    def resolve(self, style: str, key_digest: str | None) -> tuple[str, str]:
        """``(name, version)``: 403 ``style_not_allowed`` for a kit this key may not use (asked
        first, so a key learns nothing of kits outside its scope), 404 ``unknown_style``."""
        ref = brands.parse_style(style)
        if not self.scope.admits(ref.name, key_digest):
            raise StyleNotAllowedError(f"this API key may not use brand style {ref.name!r}")
        pinned = self._resolved.get(str(ref))
        if pinned is None:
            pinned = brands.resolve_style(ref)
            self._resolved.put(str(ref), pinned, self.ttl_s)
        return pinned

    def reference(self, style: str, seed: int, key_digest: str | None,
                  files: dict[str, bytes | None]) -> str:
        """Put the kit's reference for ``seed`` into ``files`` (as an upload would be); returns
        the ``name/version`` used. A request that also sends a reference is refused."""
        if files.get("reference") or files.get("reference_mask"):
            raise InvalidParameterError("send a reference image or a style, not both")
        name, version = self.resolve(style, key_digest)
        files["reference"], files["reference_mask"] = brands.load_kit(name, version).pick(seed)
        return f"{name}/{version}"
