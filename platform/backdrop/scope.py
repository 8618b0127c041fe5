"""Which objects a caller may name as an input: an allowlist of prefixes.

Over HTTP (:class:`UriScope`), an allowlist of ``s3://bucket/prefix/``. The service reads objects with its own credentials, which reach far more than any one caller
should see; a URI in a request is therefore admitted only when its canonical form lies under
one of the configured prefixes, compared on whole path segments (``s3://brand`` never admits
``s3://brand-other``). Rather than normalising odd spellings (``..``, ``//``, ``%2e``, a
backslash, a query) into something that might mean another object to the store, they are
refused: a URI is admitted only when it is already canonical. Nothing is admitted unless
configured, and a local path never is (only the ``s3`` scheme exists here).

In a batch job (:class:`InputScope`), a catalog is data from outside too: its URIs may name
``/proc/self/environ``, any object the job's credentials reach, or a symlink out of its folder.
A job reads only under its catalog's own bucket (an ``s3://`` catalog) or its catalog's folder
(a local one), plus the prefixes and folders it is given (``--allow-inputs``); local paths are
compared after resolving symlinks and ``..``. Anything else fails its row as
``input_out_of_scope``, before a byte is read.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

from .errors import InputOutOfScopeError

# S3's bucket naming rules (lower case, 3..63, no "..", no leading/trailing dot or hyphen).
_BUCKET = r"[a-z0-9](?:[a-z0-9-]|\.(?!\.)){1,61}[a-z0-9]"
# One key segment: a conservative character set; "%", "\\", "?", "#", spaces and control
# characters never appear, so no decoder downstream can turn a segment into another one.
_SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()=+@,;~-]+")
_URI = re.compile(rf"s3://(?P<bucket>{_BUCKET})(?P<key>(?:/[^/]*)*)")
SCHEME = "s3://"


class ScopeConfigError(ValueError):
    """A configured prefix that is not a canonical ``s3://bucket[/prefix]``."""


def canonical(uri: str, *, prefix: bool = False) -> str | None:
    """``uri`` if it is a canonical ``s3://bucket/key`` (``prefix``: a bucket or folder, returned
    with a trailing ``/``); ``None`` for anything else."""
    if not isinstance(uri, str) or len(uri) > 1024:
        return None
    m = _URI.fullmatch(uri)
    if m is None:
        return None
    segments = m["key"].split("/")[1:]
    if prefix and segments and segments[-1] == "":
        segments.pop()  # "s3://b/p/" is the folder "s3://b/p"
    if not prefix and not segments:
        return None  # a bucket is not an object
    for s in segments:
        if s in (".", "..") or not _SEGMENT.fullmatch(s):
            return None
    path = "/".join([f"{SCHEME}{m['bucket']}", *segments])
    return path + "/" if prefix else path


def _prefixes(entries: Sequence[str]) -> tuple[str, ...]:
    out = []
    for entry in entries:
        p = canonical(entry.strip(), prefix=True)
        if p is None:
            raise ScopeConfigError(f"allowed URI prefix {entry!r} is not a canonical s3://bucket[/prefix]")
        out.append(p)
    return tuple(out)


def _by_key(per_key: Mapping[str, Sequence[str]] | None, convert) -> dict:
    """A configuration's per-key lists, by the key's SHA-256 as ``api_key_sha256`` spells it
    (hex, any case, an optional ``sha256:`` prefix)."""
    return {d.strip().lower().removeprefix("sha256:"): convert(v) for d, v in (per_key or {}).items()}


def _for_key(per_key: dict, key_digest: str | None, shared):
    """A key's own list when it has one, else the one every key shares."""
    return per_key.get((key_digest or "").lower(), shared)


class UriScope:
    """The prefixes each caller may read from: one list for every key, or a key's own list.

    ``per_key`` maps an API key's SHA-256 (hex, as in ``api_key_sha256``) to that key's
    prefixes, which replace the shared ones for it. An empty scope admits nothing: remote
    inputs are off.
    """

    def __init__(self, prefixes: Sequence[str] = (), per_key: Mapping[str, Sequence[str]] | None = None) -> None:
        self.prefixes = _prefixes(prefixes)
        self.per_key = _by_key(per_key, _prefixes)

    def prefixes_for(self, key_digest: str | None) -> tuple[str, ...]:
        return _for_key(self.per_key, key_digest, self.prefixes)

    def admit(self, uri: str, key_digest: str | None = None) -> str | None:
        """The canonical URI when ``key_digest`` may read it, else ``None`` (never why)."""
        c = canonical(uri)
        if c is None:
            return None
        return c if any(c.startswith(p) for p in self.prefixes_for(key_digest)) else None

    def __bool__(self) -> bool:
        return bool(self.prefixes) or any(self.per_key.values())


class StyleScope:
    """The brand style kits each caller may use, by kit name: one list for every key (``*``:
    any kit), or a key's own list (``per_key``, by the key's SHA-256), as for ``UriScope``. An
    empty scope admits no kit."""

    def __init__(self, names: Sequence[str] = (), per_key: Mapping[str, Sequence[str]] | None = None) -> None:
        self.names = frozenset(names)
        self.per_key = _by_key(per_key, frozenset)

    def names_for(self, key_digest: str | None) -> frozenset[str]:
        return _for_key(self.per_key, key_digest, self.names)

    def admits(self, name: str, key_digest: str | None = None) -> bool:
        names = self.names_for(key_digest)
        return "*" in names or name in names


class InputScope:
    """The inputs a batch job may read: ``s3://bucket[/prefix]`` prefixes and local folders."""

    def __init__(self, entries: Sequence[str]) -> None:
        remote, local = [], []
        for entry in entries:
            entry = str(entry).strip()
            if entry.startswith(SCHEME):
                remote.append(entry)
            else:
                path = entry.removeprefix("file://")
                if not os.path.isabs(path):
                    raise ScopeConfigError(f"allowed input folder {entry!r} is not an absolute path")
                local.append(os.path.join(os.path.realpath(path), ""))
        self.remote, self.folders = UriScope(remote), tuple(local)

    @classmethod
    def of_catalog(cls, catalog: str, extra: Sequence[str] = ()) -> "InputScope":
        """The catalog's own bucket, or its folder (a catalog file's folder, a catalog folder
        itself), plus ``extra``."""
        catalog = str(catalog)
        if catalog.startswith(SCHEME):
            own = SCHEME + catalog[len(SCHEME):].split("/", 1)[0]
        else:
            path = os.path.abspath(catalog.removeprefix("file://"))
            own = path if os.path.isdir(path) else os.path.dirname(path)
        return cls([own, *extra])

    def describe(self) -> str:
        return ", ".join([*self.remote.prefixes, *self.folders]) or "nothing"

    def admits(self, uri: str) -> bool:
        uri = str(uri)
        if uri.startswith(SCHEME):
            return self.remote.admit(uri) is not None
        if "://" in uri and not uri.startswith("file://"):
            return False  # another scheme
        path = uri.removeprefix("file://")
        if "\x00" in path or not os.path.isabs(path):
            return False
        return any(os.path.join(os.path.realpath(path), "").startswith(f) for f in self.folders)

    def check(self, field: str, uri: str | None) -> None:
        """Raise ``InputOutOfScopeError`` (naming the field, never the object's content) unless admitted."""
        if uri and not self.admits(uri):
            raise InputOutOfScopeError(f"{field} is outside this job's input scope ({self.describe()}); "
                                       "allow more with --allow-inputs PREFIX")
