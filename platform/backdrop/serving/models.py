"""Which model version a request gets: the default alias, another allowed alias or an allowed
version, resolved through the registry with a short-lived, bounded cache so that a moved alias
is seen quickly, and with the last version an alias resolved to kept as a fallback."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Sequence

from ..errors import InvalidParameterError
from ..runtime import display_name
from .cache import TtlCache

logger = logging.getLogger(__name__)

_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() admits "١" and "²"
ANY_VERSION = "*"


class ModelNotAllowed(InvalidParameterError):
    """An alias or version this service does not offer to callers (configuration decides)."""

    code = "model_not_allowed"


@dataclass(frozen=True)
class ModelChoice:
    model_id: str  # what a generator loads: models:/NAME/VERSION, or a path
    name: str
    version: str
    alias: str | None = None
    stale: bool = False  # the alias could not be resolved: this is the version it last had


def normalise_version(version: str) -> str:
    """``"0001"`` -> ``"1"``: one spelling per version, so one cache entry and one model id."""
    if not _VERSION.fullmatch(version) or int(version) == 0:
        raise InvalidParameterError(f"model version must be a positive decimal integer, got {version[:20]!r}")
    return str(int(version))


class ModelSelector:
    """Maps a request's choice (nothing, an alias or a version) onto one concrete version.

    Callers may ask for the default alias, the ``aliases`` listed and the ``versions`` listed
    (``"*"``: any version); anything else is :class:`ModelNotAllowed`, so a version that failed
    the promotion gate is not served just because someone knows its number. Aliases are looked
    up at most every ``alias_ttl_s`` seconds, so when ``champion`` moves, later requests get the
    new version while those under way finish on theirs. When an alias stops resolving (its
    version was deleted, the registry is down) the version it last resolved to keeps being
    served, marked ``stale`` (``/readyz`` says ``degraded``). With ``model_path`` set (local
    development) the service serves that one saved generator and nothing else.
    """

    def __init__(self, model_name: str = "backdrop", default_alias: str = "champion",
                 model_path: str | None = None, alias_ttl_s: float = 2.0, *,
                 aliases: Sequence[str] = (), versions: Sequence[str] = (), max_cached: int = 64) -> None:
        self.model_name, self.default_alias = model_name, default_alias
        self.model_path, self.alias_ttl_s = model_path, alias_ttl_s
        self.aliases = frozenset([default_alias, *aliases])
        self.any_version = ANY_VERSION in versions
        self.versions = frozenset(normalise_version(v) for v in versions if v != ANY_VERSION)
        self.max_cached = max_cached
        self._cache: TtlCache[ModelChoice] = TtlCache(max_cached)
        self._last_good: dict[str, ModelChoice] = {}  # alias -> what it last resolved to
        self._lock = threading.Lock()

    @property
    def default_reference(self) -> str:
        return self.model_path or f"models:/{self.model_name}@{self.default_alias}"

    @property
    def public_reference(self) -> str:
        """The default reference as callers may see it (never the server's path)."""
        return f"path:{display_name(self.model_path)}" if self.model_path else self.default_reference

    def check(self, version: str | None = None, alias: str | None = None) -> tuple[str | None, str | None]:
        """The request's choice, validated, normalised and allowed; raises otherwise."""
        version, alias = (version or "").strip() or None, (alias or "").strip() or None
        if version and alias:
            raise InvalidParameterError("ask for a model version or an alias, not both")
        if version:
            version = normalise_version(version)
        if alias and not _ALIAS.fullmatch(alias):
            raise InvalidParameterError(f"model alias must be a word ([A-Za-z0-9_-]), got {alias[:70]!r}")
        if self.model_path and (version or alias):
            from ..registry import RegistryError

            raise RegistryError("this service runs a single saved model; versions and aliases need the registry")
        if alias and alias not in self.aliases:
            raise ModelNotAllowed(f"alias {alias!r} is not offered here (offered: {', '.join(sorted(self.aliases))})")
        if version and not (self.any_version or version in self.versions):
            raise ModelNotAllowed(f"version {version} is not offered here; ask for an alias "
                                  f"({', '.join(sorted(self.aliases))})")
        return version, alias

    def select(self, version: str | None = None, alias: str | None = None) -> ModelChoice:
        from ..registry import RegistryError, resolve_version

        version, alias = self.check(version, alias)
        if self.model_path:
            key = self.model_path
        else:
            alias = None if version else (alias or self.default_alias)
            key = f"models:/{self.model_name}/{version}" if version else f"models:/{self.model_name}@{alias}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            name, resolved = resolve_version(key)
        except RegistryError as e:
            with self._lock:
                last = self._last_good.get(key)
            if last is None:
                raise
            logger.warning("%s does not resolve (%s); serving its last version %s", key, e, last.version)
            return ModelChoice(last.model_id, last.name, last.version, last.alias, stale=True)
        if self.model_path:
            name = display_name(self.model_path)
        choice = ModelChoice(self.model_path or f"models:/{name}/{resolved}", name, resolved,
                             alias=None if self.model_path else alias)
        ttl = self.alias_ttl_s if choice.alias else 3600.0  # a version number never moves
        self._cache.put(key, choice, ttl)
        with self._lock:
            if choice.alias:
                self._last_good[key] = choice  # at most one entry per allowed alias
        return choice
