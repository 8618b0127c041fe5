"""API keys for the HTTP service, held only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
import re


class ApiKeys:
    """Accepted API keys, held only as SHA-256 digests; a key is never stored or logged.

    ``check`` answers a short key id (a digest prefix, for logs and per-client accounting)
    for a valid key and ``None`` otherwise, comparing against every digest in constant time.
    """

    def __init__(self, digests: list[str] | tuple[str, ...] = ()) -> None:
        self._digests = []
        for d in digests:
            d = d.strip().lower().removeprefix("sha256:")
            if not re.fullmatch(r"[0-9a-f]{64}", d):
                raise ValueError("api_key_sha256 entries must be hex SHA-256 digests (64 hex digits)")
            self._digests.append(bytes.fromhex(d))

    @staticmethod
    def digest(key: str) -> str:
        """The hex SHA-256 of a key: what the configuration holds."""
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def from_config(cls, digests: list[str] | tuple[str, ...] = (), plain: str = "") -> "ApiKeys":
        """Digests from the configuration plus plain keys (comma-separated, e.g. from an env var)."""
        return cls([*digests, *(cls.digest(k.strip()) for k in plain.split(",") if k.strip())])

    def check(self, key: str | None) -> str | None:
        if not key:
            return None
        presented = hashlib.sha256(key.encode()).digest()
        valid = False
        for d in self._digests:
            valid |= hmac.compare_digest(presented, d)
        return presented.hex()[:8] if valid else None

    def __len__(self) -> int:
        return len(self._digests)
