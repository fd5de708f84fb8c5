"""Queueing for an endpoint's slot and rate permit, and leaving a queue that went bad.

The manager's hot path takes a free slot and a free permit inline; a call
that finds either taken comes here. Waiting is where health matters: a pool
member that turns unhealthy turns its queued callers away (the pool's
``on_unhealthy``), and they pick again; a limiter backing off from 429s that
would hold a call longer than :data:`HAND_BACK_AFTER` sends it to another
member, or, with none, hands it back unsent as
:class:`~plait.errors.EndpointBackoffError`, so the retry policy (which knows
the run's ``max_rate_limit_wait``) decides whether it waits on. A call never
sits for minutes in a queue behind a limiter cut to a crawl.
"""

from __future__ import annotations

import time

from plait.clients.base import ChatRequest
from plait.errors import EndpointBackoffError
from plait.profiling.observer import CallProbe
from plait.resources.endpoint import Endpoint, LoopState
from plait.resources.pool import EndpointPool, PoolMember
from plait.resources.tokens import estimate_tokens
from plait.resources.usage import AliasUsage

HAND_BACK_AFTER = 2.0
"""Seconds: a call that would wait longer behind an endpoint backing off goes elsewhere."""


async def hold(
    state: LoopState,
    pool: EndpointPool[Endpoint],
    usage: AliasUsage,
    member: PoolMember[Endpoint],
    request: ChatRequest,
    probe: CallProbe | None,
    have_slot: bool,
) -> tuple[PoolMember[Endpoint], int]:
    """Queue for a slot and a rate permit, moving between members as health changes.

    Returns the member both are held for and the call's token estimate. A
    caller turned away from a slot queue (its member turned unhealthy) or
    from a rate limiter (it would wait too long) tries another member; with
    none to try, a rate wait is handed back as :class:`EndpointBackoffError`.
    On any error nothing is left held, not even the pick.
    """
    while True:
        endpoint = member.item
        request.model = endpoint.model
        slots = state.slots[endpoint.index]
        try:
            if not have_slot:
                if slots.free:
                    slots.free -= 1
                else:
                    waited = time.perf_counter()
                    granted = await slots.wait()
                    if probe is not None:
                        probe.slot_wait += time.perf_counter() - waited
                    if not granted:
                        member = _move(pool, member, 0.0)
                        continue
            have_slot = False
            limiter = endpoint.limiter
            estimate = estimate_tokens(request) if endpoint.token_limited else 0
            if limiter.try_acquire(estimate):
                return member, estimate
            wait = limiter.expected_wait() if limiter.backing_off else 0.0
            if wait <= HAND_BACK_AFTER:
                waited = time.perf_counter()
                granted = await limiter.acquire(estimate)
                blocked = time.perf_counter() - waited
                usage.rate_limit_wait += blocked
                if probe is not None:
                    probe.rate_wait += blocked
                if granted:
                    return member, estimate
                wait = limiter.expected_wait()
            slots.release()
        except BaseException:
            if have_slot:
                slots.release()
            pool.release(member)
            raise
        member = _move(pool, member, wait)


def _move(
    pool: EndpointPool[Endpoint], member: PoolMember[Endpoint], wait: float
) -> PoolMember[Endpoint]:
    """Give up ``member`` (held: the pick only) and pick again, or hand the call back.

    ``wait`` is how long the member's limiter would hold the call (0 when
    it was turned away from a slot queue). A member that would hold it
    long sits out that long, so the next pick goes elsewhere.
    """
    pool.release(member)
    if wait > HAND_BACK_AFTER:
        if not pool.has_alternative(member):
            raise EndpointBackoffError(
                f"{member.item.label} is backing off after 429s; this call would wait "
                f"{wait:.1f}s for it, so it was not sent",
                retry_after=wait,
                status_code=None,
            )
        pool.trip(member, wait)
    return pool.pick()
