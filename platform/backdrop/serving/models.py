"""Which model version a request gets: the default alias, another alias or a version, resolved
through the registry with a short-lived cache so that a moved alias is seen quickly."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from ..errors import InvalidParameterError
from ..runtime import display_name

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ModelChoice:
    model_id: str  # what a generator loads: models:/NAME/VERSION, or a path
    name: str
    version: str
    alias: str | None = None


class ModelSelector:
    """Maps a request's choice (nothing, an alias or a version) onto one concrete version.

    Aliases are looked up in the registry at most every ``alias_ttl_s`` seconds, so when
    ``champion`` moves, requests that arrive afterwards get the new version while those
    already under way finish on the version they were given. With ``model_path`` set (local
    development) the service serves that one saved generator and nothing else.
    """

    def __init__(self, model_name: str = "backdrop", default_alias: str = "champion",
                 model_path: str | None = None, alias_ttl_s: float = 2.0) -> None:
        self.model_name, self.default_alias = model_name, default_alias
        self.model_path, self.alias_ttl_s = model_path, alias_ttl_s
        self._cache: dict[str, tuple[float, ModelChoice]] = {}
        self._lock = threading.Lock()

    @property
    def default_reference(self) -> str:
        return self.model_path or f"models:/{self.model_name}@{self.default_alias}"

    def select(self, version: str | None = None, alias: str | None = None) -> ModelChoice:
        from ..registry import RegistryError, resolve_version

        version, alias = (version or "").strip() or None, (alias or "").strip() or None
        if version and alias:
            raise InvalidParameterError("ask for a model version or an alias, not both")
        if version and not version.isdigit():
            raise InvalidParameterError(f"model version must be a positive integer, got {version!r}")
        if alias and not _ALIAS.match(alias):
            raise InvalidParameterError(f"model alias must be a word ([A-Za-z0-9_-]), got {alias!r}")
        if self.model_path:
            if version or alias:
                raise RegistryError(
                    f"this service runs the single model at {self.model_path}; "
                    "versions and aliases need the registry (set model_name instead of model_path)")
            key = self.model_path
        else:
            key = f"models:/{self.model_name}/{version}" if version else \
                f"models:/{self.model_name}@{alias or self.default_alias}"
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1]
        name, resolved = resolve_version(key)
        if self.model_path:
            name = display_name(self.model_path)
        choice = ModelChoice(self.model_path or f"models:/{name}/{resolved}", name, resolved,
                             alias=None if version or self.model_path else (alias or self.default_alias))
        ttl = self.alias_ttl_s if choice.alias else 3600.0  # a version number never moves
        with self._lock:
            self._cache[key] = (time.monotonic() + ttl, choice)
        return choice
