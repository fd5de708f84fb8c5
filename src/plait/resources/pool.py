"""Choosing an endpoint inside an alias's pool, and keeping failing ones out.

Selection is by load relative to weight: the endpoint with the fewest calls
in flight per unit of weight wins, and ties (an idle pool) go to the one with
the fewest picks per unit of weight, which spreads sequential traffic by
weight too. An endpoint that fails with a transient error several times in a
row is a circuit breaker that trips: it sits out a cool-down that doubles
with every repeated trip, then gets traffic again (half-open) and is fully
trusted after one success. A pool never refuses to pick: if every endpoint
is cooling down, the one that recovers first is used, because a request to a
probably-down endpoint beats failing the task without trying.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from plait.errors import ConfigError

T = TypeVar("T")


class PoolMember(Generic[T]):
    """One endpoint's load and health, plus the caller's payload ``item``."""

    __slots__ = (
        "cooldown_until",
        "failures",
        "in_flight",
        "index",
        "item",
        "picks",
        "trips",
        "weight",
    )

    def __init__(self, index: int, item: T, weight: float) -> None:
        self.index = index
        self.item = item
        self.weight = weight
        self.in_flight = 0
        self.picks = 0
        self.failures = 0
        self.trips = 0
        self.cooldown_until = 0.0

    def __repr__(self) -> str:
        return (
            f"PoolMember(index={self.index}, weight={self.weight}, in_flight={self.in_flight}, "
            f"failures={self.failures}, trips={self.trips})"
        )


class EndpointPool(Generic[T]):
    """Weighted, health-aware selection among the endpoints of one alias.

    ``pick()`` counts the member as in flight until ``release()``; the
    outcome is reported with ``record_success()`` or ``record_failure()``
    (transient failures only: a 429 says the endpoint is busy, not broken).
    """

    def __init__(
        self,
        items: Sequence[T],
        weights: Sequence[float] | None = None,
        *,
        failure_threshold: int = 2,
        base_cooldown: float = 1.0,
        max_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not items:
            raise ConfigError("a pool needs at least one endpoint")
        if weights is None:
            weights = [1.0] * len(items)
        if len(weights) != len(items) or any(not w > 0 for w in weights):
            raise ConfigError("weights must be positive, one per endpoint")
        if failure_threshold < 1:
            raise ConfigError("failure_threshold must be >= 1")
        if not 0 < base_cooldown <= max_cooldown:
            raise ConfigError("need 0 < base_cooldown <= max_cooldown")
        self.members = [
            PoolMember(i, item, w) for i, (item, w) in enumerate(zip(items, weights, strict=True))
        ]
        self._single = self.members[0] if len(self.members) == 1 else None
        self._threshold = failure_threshold
        self._base_cooldown = base_cooldown
        self._max_cooldown = max_cooldown
        self._clock = clock

    def pick(self) -> PoolMember[T]:
        """The member to send the next call to; it counts as in flight."""
        single = self._single
        if single is not None:
            single.in_flight += 1
            return single
        now = self._clock()
        best: PoolMember[T] | None = None
        best_key = (0.0, 0.0)
        for member in self.members:
            if member.cooldown_until > now:
                continue
            key = (member.in_flight / member.weight, member.picks / member.weight)
            if best is None or key < best_key:
                best, best_key = member, key
        chosen = best if best is not None else min(self.members, key=_cooldown_end)
        chosen.in_flight += 1
        chosen.picks += 1
        return chosen

    def release(self, member: PoolMember[T]) -> None:
        """The call picked for ``member`` has finished, whatever its outcome."""
        member.in_flight -= 1

    def record_success(self, member: PoolMember[T]) -> None:
        """Close the member's breaker: one success clears its failure history."""
        if member.failures or member.trips:
            member.failures = 0
            member.trips = 0
            member.cooldown_until = 0.0

    def record_failure(self, member: PoolMember[T]) -> None:
        """Count a transient failure; trip the breaker at the threshold.

        A member that has tripped before is half-open after its cool-down,
        so a single further failure trips it again, for twice as long.
        """
        now = self._clock()
        if member.cooldown_until > now:
            # A call sent before the trip; the breaker already knows.
            return
        member.failures += 1
        if member.failures < self._threshold and not member.trips:
            return
        cooldown = min(self._max_cooldown, self._base_cooldown * 2.0**member.trips)
        member.trips += 1
        member.failures = 0
        member.cooldown_until = now + cooldown

    def healthy(self) -> list[PoolMember[T]]:
        """Members not cooling down right now."""
        now = self._clock()
        return [m for m in self.members if m.cooldown_until <= now]

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"EndpointPool({self.members!r})"


def _cooldown_end(member: PoolMember[T]) -> float:
    return member.cooldown_until
