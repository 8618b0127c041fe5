"""A small, bounded, thread-safe cache of lookups that go stale: what an alias or a style
points to is asked of the registry at most once per its time to live, and the least recently
used entries are dropped past ``max_entries``."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value while it is fresh, else ``None``."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] <= time.monotonic():
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, key: Hashable, value: V, ttl_s: float) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
