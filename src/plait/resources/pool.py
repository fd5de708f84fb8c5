"""Choosing an endpoint inside an alias's pool by observed health.

Selection is by load relative to weight: the endpoint with the fewest calls
in flight per unit of weight wins, and ties (an idle pool) go to the one with
the fewest picks per unit of weight, which spreads sequential traffic by
weight too. Only members that look healthy compete, and health is what the
pool observed, in three forms:

- **Failing.** A member that fails with a transient error several times in a
  row is a circuit breaker that trips: it sits out a cool-down that doubles
  with every repeated trip, then gets traffic again (half-open) and is fully
  trusted after one success.
- **Refusing.** A run of 429s (the endpoint's limiter decided it is a burst,
  not a stray) trips the same breaker, for at least the server's pause.
- **Stalled.** A member with calls on the wire and no reply for several times
  the pool's usual latency is skipped until a reply arrives. Load alone does
  not show a stall: a stalled member's queue grows no faster than a healthy
  one's, so without this half the traffic would queue behind it.

Whenever a member turns unhealthy the pool tells ``on_unhealthy``, so the
owner can hand the calls queued for it to the others. A pool never refuses to
pick: if every member is unhealthy, the one that recovers first is used,
because a request to a probably-down endpoint beats failing without trying.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from plait.errors import ConfigError

T = TypeVar("T")

# A member is stalled after this many times the usual latency without a reply,
# and never sooner than _STALL_FLOOR seconds (timers and GC pauses are noise).
_STALL_FACTOR = 4.0
_STALL_FLOOR = 0.25
# Weight of the newest sample in a member's latency average.
_LATENCY_WEIGHT = 0.2


class PoolMember(Generic[T]):
    """One endpoint's load and health, plus the caller's payload ``item``.

    ``in_flight`` counts calls picked for it and not released (queued or
    sent); ``active`` only those on the wire, and ``quiet_since`` is when the
    last reply arrived (or the first of them was sent), which is what a stall
    is measured from. ``latency`` is an average of successful calls (0 until
    one has finished).
    """

    __slots__ = (
        "active",
        "cooldown_until",
        "failures",
        "in_flight",
        "index",
        "item",
        "latency",
        "picks",
        "quiet_since",
        "stalled",
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
        self.active = 0
        self.quiet_since = 0.0
        self.latency = 0.0
        self.stalled = False

    def __repr__(self) -> str:
        return (
            f"PoolMember(index={self.index}, weight={self.weight}, in_flight={self.in_flight}, "
            f"failures={self.failures}, trips={self.trips}, stalled={self.stalled})"
        )


class EndpointPool(Generic[T]):
    """Weighted, health-aware selection among the endpoints of one alias.

    ``pick()`` counts the member as in flight until ``release()``. A caller
    that sends reports it with ``sent()`` and ``finished()``, and the outcome
    with ``record_success()`` or ``record_failure()`` (transient failures
    only) or, for a burst of 429s, ``trip()``. A one-member pool has nowhere
    else to send, so it skips all health bookkeeping but the breaker.
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
        on_unhealthy: Callable[[PoolMember[T]], None] | None = None,
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
        self.on_unhealthy = on_unhealthy

    def pick(self) -> PoolMember[T]:
        """The member to send the next call to; it counts as in flight."""
        single = self._single
        if single is not None:
            single.in_flight += 1
            return single
        now = self._clock()
        typical = self._typical_latency()
        best: PoolMember[T] | None = None
        best_key = (0.0, 0.0)
        for member in self.members:
            if member.cooldown_until > now or self._stalling(member, now, typical):
                continue
            key = (member.in_flight / member.weight, member.picks / member.weight)
            if best is None or key < best_key:
                best, best_key = member, key
        chosen = best if best is not None else min(self.members, key=_recovery_order)
        chosen.in_flight += 1
        chosen.picks += 1
        return chosen

    def release(self, member: PoolMember[T]) -> None:
        """The call picked for ``member`` has finished, whatever its outcome."""
        member.in_flight -= 1

    def sent(self, member: PoolMember[T]) -> None:
        """A call picked for ``member`` is now on the wire."""
        if self._single is None:
            if not member.active:
                member.quiet_since = self._clock()
            member.active += 1

    def finished(self, member: PoolMember[T]) -> None:
        """A call ``sent()`` to ``member`` is off the wire, whatever its outcome."""
        if self._single is None:
            member.active -= 1
            if not member.active:
                member.stalled = False

    def has_alternative(self, member: PoolMember[T]) -> bool:
        """Whether another member could take a call right now."""
        if self._single is not None:
            return False
        now = self._clock()
        typical = self._typical_latency()
        return any(
            other is not member
            and other.cooldown_until <= now
            and not self._stalling(other, now, typical)
            for other in self.members
        )

    def record_success(self, member: PoolMember[T], latency: float | None = None) -> None:
        """Close the member's breaker: one success clears its failure history.

        ``latency`` (seconds on the wire) feeds the member's average, which is
        what its next stall is judged against.
        """
        if self._single is None:
            member.quiet_since = self._clock()
            member.stalled = False
            if latency is not None:
                member.latency = (
                    latency
                    if not member.latency
                    else member.latency + _LATENCY_WEIGHT * (latency - member.latency)
                )
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
        self._trip(member, now, 0.0)

    def trip(self, member: PoolMember[T], at_least: float) -> None:
        """Take ``member`` out for at least ``at_least`` seconds (a burst of 429s).

        Counts as a trip of the breaker, so a member that keeps refusing sits
        out longer each time, and one success brings it back.
        """
        now = self._clock()
        if member.cooldown_until >= now + at_least:
            return
        self._trip(member, now, at_least)

    def healthy(self) -> list[PoolMember[T]]:
        """Members neither cooling down nor stalled right now."""
        now = self._clock()
        typical = self._typical_latency()
        return [
            m
            for m in self.members
            if m.cooldown_until <= now and not self._stalling(m, now, typical)
        ]

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"EndpointPool({self.members!r})"

    def _trip(self, member: PoolMember[T], now: float, at_least: float) -> None:
        cooldown = max(at_least, min(self._max_cooldown, self._base_cooldown * 2.0**member.trips))
        member.trips += 1
        member.failures = 0
        member.cooldown_until = now + cooldown
        if self.on_unhealthy is not None:
            self.on_unhealthy(member)

    def _typical_latency(self) -> float:
        """The lowest latency average in the pool: what a healthy member takes."""
        known = [m.latency for m in self.members if m.latency]
        return min(known) if known else 0.0

    def _stalling(self, member: PoolMember[T], now: float, typical: float) -> bool:
        """Whether ``member`` has had calls on the wire too long without a reply.

        Noticing a stall is a transition that ``on_unhealthy`` hears about once.
        """
        if not member.active:
            return False
        if member.stalled:
            return True
        usual = max(member.latency, typical)
        if now - member.quiet_since <= max(_STALL_FLOOR, _STALL_FACTOR * usual):
            return False
        member.stalled = True
        if self.on_unhealthy is not None:
            self.on_unhealthy(member)
        return True


def _recovery_order(member: PoolMember[T]) -> tuple[bool, float]:
    return member.stalled, member.cooldown_until
