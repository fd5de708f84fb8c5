"""Client-side request and token rate limiting with adaptive backpressure.

Two token buckets (requests per minute, tokens per minute) gate each call.
The request bucket holds about one request by default, so calls are paced
evenly instead of bursting: a server that enforces the same limit with a
short burst window then never answers 429, while the achieved rate still
matches the configured one. Levels may go negative (debt): an oversized or
under-estimated request is paid for by the requests after it, which keeps the
long-run rate exact and means no request can be too large to ever pass.

Waiting is FIFO and event driven: waiters queue in a
:class:`~plait.resources.waiters.WaitQueue`, and a single timer is set for
the moment the head of the queue can go, so nothing polls.
Futures and the timer are created on first use in the running loop rather
than in ``__init__``, because ``run_sync`` may run successive calls in fresh
event loops; a limiter follows whichever loop uses it, one at a time.

On a 429 the limiter backs off in proportion to the evidence. It keeps the
recent share of requests that were refused (an exponential average over the
requests its owner reports sent, starting at "all refused": a refusal with
no request known to have gone out says the endpoint is saturated). A lone
429 among many requests cuts the request rate a little and pauses nobody:
only the refused call waits for its ``Retry-After``, which the retry policy
sees to. A burst (the share high) pauses every caller for the server's delay
and cuts the rate by up to ``backoff_factor``; an endpoint with no rate of
its own only starts pacing on a burst. Each success then regains a step of
the rate (additive increase, multiplicative decrease).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from plait.errors import ConfigError
from plait.resources.waiters import WaitQueue

# Waits shorter than this are granted at once: timers fire a hair early and
# levels may go slightly negative, which the debt accounting absorbs.
_EPSILON = 1e-4
# After a rate cut, further 429s within this many seconds (or within the
# pause) come from requests sent before the cut and must not cut again.
_CUT_GUARD = 1.0
# How far back the observed rate is measured when no rate was configured.
_OBSERVE_WINDOW = 10.0
# Weight of the newest reply in the recent share of 429s: about the last ten.
_EVIDENCE_WEIGHT = 0.1
# From this share of 429s on, a refusal is a burst and pauses every caller;
# from _FULL_SHARE on it cuts the rate by the whole backoff_factor.
_BURST_SHARE = 0.3
_FULL_SHARE = 0.5


class RateLimiter:
    """Paces calls to one endpoint under request and token limits.

    ``requests_per_minute`` / ``tokens_per_minute`` of None mean unlimited;
    an unlimited limiter still honours 429 pauses and, after one, paces at
    a rate derived from what it had been sending. ``burst_seconds`` lets the
    buckets hold that many seconds of their rate (at least one request);
    the default, 0, means smooth pacing.

    Backpressure knobs: a 429 multiplies the request rate by between
    ``backoff_factor`` (a burst) and nearly 1 (a lone refusal), never going
    below ``min_requests_per_minute``; each success then adds back
    ``recovery`` times the rate in force before the cut, until it is
    reached. A burst without ``Retry-After`` pauses for ``base_backoff``
    seconds, doubling with each further 429 before a success, up to
    ``max_backoff`` (which also caps a ``Retry-After``).
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        burst_seconds: float = 0.0,
        backoff_factor: float = 0.5,
        recovery: float = 0.02,
        min_requests_per_minute: float = 1.0,
        base_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or None")
        if not burst_seconds >= 0:
            raise ConfigError("burst_seconds must be >= 0")
        if not 0 < backoff_factor < 1:
            raise ConfigError("backoff_factor must be between 0 and 1")
        if not 0 < recovery <= 1:
            raise ConfigError("recovery must be in (0, 1]")
        if not min_requests_per_minute > 0:
            raise ConfigError("min_requests_per_minute must be > 0")
        if not 0 < base_backoff <= max_backoff:
            raise ConfigError("need 0 < base_backoff <= max_backoff")

        self._configured_rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._configured_rps = None if requests_per_minute is None else requests_per_minute / 60
        self._tps = None if tokens_per_minute is None else tokens_per_minute / 60
        self._burst = burst_seconds
        self._backoff_factor = backoff_factor
        self._recovery = recovery
        self._min_rps = min_requests_per_minute / 60
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff

        self._rps = self._configured_rps
        self._req_cap = self._request_capacity(self._rps)
        self._tok_cap = 0.0 if self._tps is None else self._tps * burst_seconds
        self._req_level = self._req_cap
        self._tok_level = self._tok_cap
        self._stamp = time.monotonic()

        self._paused_until = 0.0
        self._strikes = 0
        self._degraded = False
        self._ceiling = 0.0
        self._cut_guard_until = 0.0
        self._cut_at = 0.0
        self._refused_share = 1.0
        # Unlimited limiters have no rate to cut on a 429, so they keep a
        # grant count and a sampled (time, count) trail to derive one from.
        self._granted = 0
        self._marks: deque[tuple[float, int]] = deque(maxlen=64)
        self._open = self._rps is None and self._tps is None

        # Each waiter queues with the tokens it wants.
        self._waiters: WaitQueue[int] = WaitQueue(
            on_lost_wake=self._refund, on_head_change=self._dispatch
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- public state ----------------------------------------------------

    @property
    def requests_per_minute(self) -> float | None:
        """The request rate in force now (lower than configured after a 429)."""
        if not self._degraded:
            return self._configured_rpm
        return None if self._rps is None else self._rps * 60

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tpm

    @property
    def paused_for(self) -> float:
        """Seconds until a 429 pause ends (0 when not paused)."""
        return max(0.0, self._paused_until - time.monotonic())

    @property
    def backing_off(self) -> bool:
        """Whether 429s have slowed this endpoint below its own pace right now."""
        return self._degraded or self._paused_until > time.monotonic()

    def expected_wait(self) -> float:
        """Seconds a caller arriving now would wait, behind those already queued.

        An estimate from the pause and the request rate (token limits are the
        configured pace, not backoff), for callers deciding whether to queue
        here or go elsewhere.
        """
        now = time.monotonic()
        self._refill(now)
        return max(0.0, self._start_of(len(self._waiters), now))

    def evict_beyond(self, seconds: float) -> int:
        """Turn away queued callers that would wait more than ``seconds`` from now.

        They were granted nothing and wake from :meth:`acquire` with False;
        returns how many left.
        """
        now = time.monotonic()
        self._refill(now)
        keep = 0
        while keep < len(self._waiters) and self._start_of(keep, now) <= seconds:
            keep += 1
        return self._waiters.evict(keep)

    @property
    def waiting(self) -> int:
        """Callers queued in :meth:`acquire`."""
        return len(self._waiters)

    def __repr__(self) -> str:
        return (
            f"RateLimiter(requests_per_minute={self.requests_per_minute}, "
            f"tokens_per_minute={self.tokens_per_minute}, waiting={len(self._waiters)})"
        )

    # -- acquiring -------------------------------------------------------

    def try_acquire(self, tokens: int = 0) -> bool:
        """Take the permits if they are free now and nobody is queued.

        The synchronous fast path of :meth:`acquire`: callers on a hot path
        try this first and only await ``acquire`` when it returns False.
        """
        if self._open:
            self._count_grant()
            return True
        if self._waiters:
            return False
        now = time.monotonic()
        if (
            self._tps is None
            and self._configured_rps is None
            and not self._degraded
            and now >= self._paused_until
        ):
            self._open = True
        self._refill(now)
        if self._wait_for(now, tokens) > _EPSILON:
            return False
        self._take(tokens)
        return True

    async def acquire(self, tokens: int = 0) -> bool:
        """Wait, in arrival order, for one request permit and ``tokens`` token permits.

        True once granted; False, with nothing granted, for a caller turned
        away by :meth:`evict_beyond`.
        """
        if tokens < 0:
            raise ConfigError("tokens must be >= 0")
        if self.try_acquire(tokens):
            return True
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        # A caller cancelled after its grant refunds it (``_refund``); the
        # first in line re-arms the timer (``_dispatch``).
        return await self._waiters.wait(tokens)

    def correct(self, estimated: int, actual: int) -> None:
        """Settle a token estimate against the usage the reply reported.

        Over-estimates are refunded (capped at the bucket's capacity);
        under-estimates become debt that later callers wait for.
        """
        if self._tps is None or estimated == actual:
            return
        self._refill(time.monotonic())
        self._tok_level = min(self._tok_cap, self._tok_level + (estimated - actual))
        if actual < estimated and self._waiters:
            self._dispatch()

    # -- backpressure ----------------------------------------------------

    def on_rate_limited(
        self,
        retry_after: float | None = None,
        sent_at: float | None = None,
        *,
        max_pause: float | None = None,
    ) -> None:
        """Cut the request rate after a 429, and pause every caller if it is a burst.

        How hard is set by the recent share of 429s among replies: a lone
        refusal among successes cuts a few percent and pauses nobody (the
        refused call waits on its own); a run of them pauses everyone for the
        server's delay and cuts by up to ``backoff_factor``.

        A 429 for a call sent before the last cut is already answered by that
        cut, so it only extends the pause; one for a call sent since says the
        cut rate is still too high and cuts again. Without ``sent_at``, 429s
        within a second of a cut are taken as the same burst.

        ``max_pause`` (the refused call's run's ``max_retry_after``) bounds
        the pause too: a run must not be held longer than it said it waits.
        """
        now = time.monotonic()
        self._refill(now)
        share = self._refused_share + _EVIDENCE_WEIGHT * (1.0 - self._refused_share)
        self._refused_share = share
        self._open = False
        if share >= _BURST_SHARE:
            if retry_after is None or not retry_after >= 0:
                delay = min(self._max_backoff, self._base_backoff * 2.0**self._strikes)
            else:
                delay = min(retry_after, self._max_backoff)
            if max_pause is not None:
                delay = min(delay, max_pause)
            self._strikes += 1
            self._paused_until = max(self._paused_until, now + delay)
        if (now < self._cut_guard_until) if sent_at is None else (sent_at < self._cut_at):
            return
        if self._rps is None and share < _BURST_SHARE:
            # Nothing paces this endpoint, and a stray refusal is no reason to
            # start: a rate derived from the average would hold back the
            # bursts its concurrency naturally sends, costing far more than
            # the one refused call.
            return
        if self._rps is None:
            self._ceiling = self._observed_rate(now)
            current = self._ceiling
        else:
            if not self._degraded:
                self._ceiling = self._rps
            current = self._rps
        factor = 1.0 - (1.0 - self._backoff_factor) * min(1.0, share / _FULL_SHARE)
        self._set_rate(max(self._min_rps, current * factor))
        self._degraded = True
        self._cut_at = now
        self._cut_guard_until = max(self._paused_until, now + _CUT_GUARD)

    def on_sent(self) -> None:
        """A request went to the server: one more reply the next 429 is weighed against.

        The share of 429s is counted per request sent rather than per success,
        because a refusal comes back at once while successes take a latency:
        counted by replies, a stray 429 among the first requests of a run
        would look like the whole endpoint refusing.
        """
        share = self._refused_share
        if share:
            share *= 1.0 - _EVIDENCE_WEIGHT
            self._refused_share = share if share > 1e-3 else 0.0

    def on_success(self, sent_at: float | None = None) -> None:
        """Regain a step of the request rate after a 429 cut it.

        ``sent_at`` is when the call was sent (``time.monotonic()``). Replies to
        calls sent before the cut say nothing about the new rate: recovering on
        them would release the whole queue into another burst of 429s. Without
        ``sent_at``, every reply within a second of the cut is treated so.
        """
        self._strikes = 0
        if not self._degraded:
            return
        now = time.monotonic()
        if sent_at is None:
            if now < self._cut_guard_until:
                return
        elif sent_at < self._cut_at:
            return
        self._refill(now)
        rate = (self._rps or 0.0) + self._ceiling * self._recovery
        if rate >= self._ceiling:
            self._degraded = False
            self._set_rate(self._configured_rps)
        else:
            self._set_rate(rate)
        if self._waiters:
            self._dispatch()

    # -- internals -------------------------------------------------------

    def _request_capacity(self, rps: float | None) -> float:
        return 1.0 if rps is None else max(1.0, rps * self._burst)

    def _set_rate(self, rps: float | None) -> None:
        self._rps = rps
        self._req_cap = self._request_capacity(rps)
        self._req_level = min(self._req_level, self._req_cap)

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed <= 0:
            return
        self._stamp = now
        if self._rps is not None and self._req_level < self._req_cap:
            self._req_level = min(self._req_cap, self._req_level + elapsed * self._rps)
        if self._tps is not None and self._tok_level < self._tok_cap:
            self._tok_level = min(self._tok_cap, self._tok_level + elapsed * self._tps)

    def _start_of(self, position: int, now: float) -> float:
        """Seconds from ``now`` until the caller at queue ``position`` gets a request permit."""
        wait = self._paused_until - now
        if self._rps is not None:
            wait = max(wait, (position + 1.0 - self._req_level) / self._rps)
        return wait

    def _wait_for(self, now: float, tokens: int) -> float:
        """Seconds until a caller wanting ``tokens`` may go (<= 0: now)."""
        wait = self._paused_until - now
        if self._rps is not None and self._req_level < 1.0:
            wait = max(wait, (1.0 - self._req_level) / self._rps)
        if self._tps is not None:
            need = min(float(tokens), self._tok_cap)
            if self._tok_level < need:
                wait = max(wait, (need - self._tok_level) / self._tps)
        return wait

    def _take(self, tokens: int) -> None:
        if self._rps is not None:
            self._req_level -= 1.0
        if self._tps is not None:
            self._tok_level -= tokens
        if self._configured_rps is None:
            self._count_grant()

    def _count_grant(self) -> None:
        self._granted += 1
        if self._granted & 15 == 1:
            self._marks.append((time.monotonic(), self._granted))

    def _observed_rate(self, now: float) -> float:
        """Requests per second granted recently; the base for a derived limit."""
        for stamp, count in self._marks:
            if stamp >= now - _OBSERVE_WINDOW:
                # A small floor, not a whole second: a rate derived from the
                # first milliseconds of traffic must not come out far too low.
                return max(self._min_rps, (self._granted - count + 1) / max(now - stamp, 0.01))
        return self._min_rps

    def _dispatch(self) -> None:
        """Grant queued callers in order; arm one timer for the first that must wait."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.monotonic()
        self._refill(now)
        waiters = self._waiters
        while (head := waiters.head()) is not None:
            wait = self._wait_for(now, head.value)
            if wait > _EPSILON:
                if self._loop is not None:
                    self._timer = self._loop.call_later(wait, self._dispatch)
                return
            self._take(head.value)
            waiters.wake_one()

    def _refund(self, tokens: int) -> None:
        if self._rps is not None:
            self._req_level = min(self._req_cap, self._req_level + 1.0)
        self.correct(tokens, 0)
        if self._waiters:
            self._dispatch()

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move to a new event loop, dropping waiters left by a previous one.

        Limiters are used by one loop at a time, so waiters of another loop
        belong to a loop that is finished; keeping them would block the queue.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiters.clear()
        self._loop = loop
