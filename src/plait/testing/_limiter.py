"""The server-side token bucket that turns excess requests into 429s.

It mirrors how hosted endpoints enforce requests-per-minute: a bucket that
refills continuously, so a client that paces itself correctly never sees a
429, and one that bursts past the capacity does at once.
"""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """A continuously refilling bucket of request tokens; starts full."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self._rate = rate
        self._capacity = capacity
        self._tokens = capacity
        self._stamp = time.monotonic()

    def try_acquire(self) -> float:
        """Take one token and return 0.0, or return the seconds until one exists.

        Returning the wait instead of a boolean lets the 429 carry the exact
        delay in ``retry-after-ms``, which well-behaved clients honour.
        """
        now = time.monotonic()
        tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self._rate

    def refill(self) -> None:
        """Make the bucket full again (used when the counters are reset)."""
        self._tokens = self._capacity
        self._stamp = time.monotonic()


class SlidingWindow:
    """At most ``limit`` requests in any ``window`` seconds, as some hosted APIs count.

    Stricter than a bucket refilling at the same rate: a client pacing at
    exactly the limit has ``limit + 1`` requests in a closed window of that
    length whenever its timer fires a little early once.
    """

    __slots__ = ("_limit", "_seen", "_window")

    def __init__(self, limit: float, window: float) -> None:
        self._limit = limit
        self._window = window
        self._seen: deque[float] = deque()

    def try_acquire(self) -> float:
        """Admit one request and return 0.0, or return the seconds until one fits."""
        now = time.monotonic()
        seen = self._seen
        while seen and seen[0] <= now - self._window:
            seen.popleft()
        if len(seen) < self._limit:
            seen.append(now)
            return 0.0
        return seen[0] + self._window - now

    def refill(self) -> None:
        self._seen.clear()
