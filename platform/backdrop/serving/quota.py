"""Per-key admission: a token bucket (rate) and a count of requests in progress (concurrency).

One key must not be able to take the whole service: past its rate or its concurrency a
request is refused at once (HTTP 429 with ``Retry-After``) instead of waiting in a queue that
every other caller shares. The clock is injected so that the arithmetic can be tested without
waiting; state is per ingress replica (a key's effective limit is the limit times the
replicas), and the table of keys is bounded so that many keys cannot grow it without end.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable


class QuotaExceeded(Exception):
    """This key is over its rate or its concurrency; ``retry_after_s`` says when to come back."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    active: int = 0


class KeyQuota:
    """``rate_per_s`` requests a second on average with bursts of ``burst``, and at most
    ``max_concurrent`` at once, per key. ``None`` (or 0) switches that limit off."""

    def __init__(self, rate_per_s: float | None = None, burst: int | None = None,
                 max_concurrent: int | None = None, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000, unit: str = "requests") -> None:
        self.rate, self.unit = rate_per_s or None, unit
        self.burst = float(burst or max(1, math.ceil(rate_per_s or 1)))
        self.max_concurrent = max_concurrent or None
        self.clock, self.max_keys = clock, max_keys
        self._keys: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str, cost: float = 1.0, hold: bool = True) -> None:
        """Admit one request for ``key`` costing ``cost`` tokens or raise :class:`QuotaExceeded`;
        with ``hold`` it counts as in progress until :meth:`release`. A work-weighted bucket
        charges a request's price (``cost``) instead of 1; a cost over the whole burst needs (and
        empties) a full bucket, so it waits for its turn instead of never passing."""
        now = self.clock()
        with self._lock:
            b = self._keys.get(key)
            if b is None:
                b = self._keys[key] = _Bucket(self.burst, now)
                while len(self._keys) > self.max_keys:
                    oldest, old = next(iter(self._keys.items()))
                    if old.active:  # never forget a key with requests in progress
                        self._keys.move_to_end(oldest)
                        break
                    del self._keys[oldest]
            self._keys.move_to_end(key)
            if self.max_concurrent and b.active >= self.max_concurrent:
                raise QuotaExceeded(f"this API key already has {b.active} requests in progress "
                                    f"(the limit is {self.max_concurrent})", 1.0)
            if self.rate:
                b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
                b.stamp = now
                need = min(cost, self.burst)
                if b.tokens < need:
                    raise QuotaExceeded(f"this API key is over its rate of {self.rate:g} {self.unit}/s",
                                        (need - b.tokens) / self.rate)
                b.tokens -= need
            if hold:
                b.active += 1

    def release(self, key: str) -> None:
        with self._lock:
            b = self._keys.get(key)
            if b is not None and b.active:
                b.active -= 1

    def active(self, key: str) -> int:
        with self._lock:
            b = self._keys.get(key)
            return b.active if b else 0
