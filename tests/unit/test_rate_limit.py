"""RateLimiter: pacing, FIFO order, oversize requests, token correction, 429 backpressure.

Timing checks use generous bounds: they catch a limiter that does not wait
(or waits far too long), not small scheduling noise.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from plait.resources import RateLimiter, rate_limit


async def timed_acquires(limiter: RateLimiter, count: int, tokens: int = 0) -> float:
    start = time.monotonic()
    for _ in range(count):
        await asyncio.wait_for(limiter.acquire(tokens), timeout=5)
    return time.monotonic() - start


async def test_unlimited_never_waits() -> None:
    limiter = RateLimiter(None, None)
    assert await timed_acquires(limiter, 1000, tokens=10_000) < 0.5
    assert limiter.requests_per_minute is None


async def test_requests_are_paced_evenly() -> None:
    limiter = RateLimiter(600, None)  # 10 per second
    elapsed = await timed_acquires(limiter, 6)
    # The first goes at once (the bucket holds one request), the next five are
    # spaced 0.1 s apart: no burst, and no more than a small overshoot.
    assert 0.45 <= elapsed < 1.0


async def test_no_burst_by_default() -> None:
    limiter = RateLimiter(600, None)
    await limiter.acquire()
    assert not limiter.try_acquire()  # the second must wait ~0.1 s


async def test_burst_seconds_allows_a_burst() -> None:
    limiter = RateLimiter(600, None, burst_seconds=0.5)  # holds 5 requests
    assert await timed_acquires(limiter, 5) < 0.05
    assert not limiter.try_acquire()


async def test_pacing_of_concurrent_callers() -> None:
    limiter = RateLimiter(1200, None)  # 20 per second
    start = time.monotonic()
    grants: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        grants.append(time.monotonic() - start)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(11))), timeout=5)
    assert 0.45 <= grants[-1] < 1.0
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) > 0.03  # evenly spread, never two at once


async def test_waiters_are_served_in_arrival_order() -> None:
    limiter = RateLimiter(3000, 60_000)  # 50 requests/s, 1000 tokens/s
    order: list[int] = []

    async def one(index: int, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(index)

    # A large request in the middle must not be overtaken by small ones.
    sizes = [1, 1, 200, 1, 1, 1, 50, 1]
    tasks = []
    for index, tokens in enumerate(sizes):
        tasks.append(asyncio.create_task(one(index, tokens)))
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert order == list(range(len(sizes)))


async def test_request_larger_than_token_bucket_still_passes() -> None:
    limiter = RateLimiter(None, 600)  # 10 tokens/s, bucket holds at most 10
    await asyncio.wait_for(limiter.acquire(10_000), timeout=1)
    # It went into debt, so the next caller waits.
    assert not limiter.try_acquire(1)


async def test_oversize_waits_for_a_full_bucket_then_goes() -> None:
    limiter = RateLimiter(None, 60_000, burst_seconds=0.2)  # 1000/s, holds 200
    await limiter.acquire(200)  # empties the bucket
    start = time.monotonic()
    await asyncio.wait_for(limiter.acquire(5_000), timeout=2)  # needs the bucket full: ~0.2 s
    assert 0.15 <= time.monotonic() - start < 1.0


async def test_correct_refunds_and_charges_tokens() -> None:
    limiter = RateLimiter(None, 12_000)  # 200 tokens/s, smooth
    await limiter.acquire(500)
    assert not limiter.try_acquire(1)  # 2.5 s of debt
    limiter.correct(500, 0)  # the call used nothing
    assert limiter.try_acquire(1)
    limiter.correct(1, 101)  # it used 100 more than estimated: 0.5 s of debt
    start = time.monotonic()
    await asyncio.wait_for(limiter.acquire(1), timeout=3)
    assert 0.4 <= time.monotonic() - start < 1.5


async def test_refund_wakes_a_waiter() -> None:
    limiter = RateLimiter(None, 600)  # 10 tokens/s
    await limiter.acquire(100)  # 10 s of debt
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limiter.correct(100, 0)
    await asyncio.wait_for(waiter, timeout=1)


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    limiter = RateLimiter(600, None)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    first.cancel()
    start = time.monotonic()
    await asyncio.wait_for(second, timeout=1)
    assert time.monotonic() - start < 0.2  # took the cancelled waiter's place
    assert limiter.waiting == 0


async def test_429_pause_honours_retry_after() -> None:
    limiter = RateLimiter(6000, None)  # 100/s: pacing is not what is measured
    limiter.on_rate_limited(0.3)
    assert limiter.paused_for > 0.2
    start = time.monotonic()
    await asyncio.wait_for(limiter.acquire(), timeout=2)
    assert 0.27 <= time.monotonic() - start < 1.0


async def test_429_pause_holds_callers_already_waiting() -> None:
    limiter = RateLimiter(600, None)
    await limiter.acquire()
    start = time.monotonic()
    waiter = asyncio.create_task(limiter.acquire())  # due in ~0.1 s
    await asyncio.sleep(0.01)
    limiter.on_rate_limited(0.4)
    await asyncio.wait_for(waiter, timeout=2)
    assert time.monotonic() - start >= 0.37


async def test_429_without_retry_after_backs_off_exponentially() -> None:
    limiter = RateLimiter(None, None, base_backoff=0.1, max_backoff=1.0)
    limiter.on_rate_limited(None)
    first = limiter.paused_for
    limiter.on_rate_limited(None)
    second = limiter.paused_for
    assert 0.05 < first <= 0.1
    assert 0.15 < second <= 0.2
    limiter.on_success()  # resets the backoff
    await asyncio.sleep(0.21)
    limiter.on_rate_limited(None)
    assert limiter.paused_for <= 0.1


class FakeClock:
    """Stands in for the ``time`` module inside rate_limit, so tests can step time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(rate_limit, "time", fake)
    return fake


def test_rate_is_cut_on_429_and_recovers_with_successes(clock: FakeClock) -> None:
    limiter = RateLimiter(600, None, recovery=0.1)
    limiter.on_rate_limited(0.0)
    assert limiter.requests_per_minute == pytest.approx(300)
    limiter.on_rate_limited(0.0)  # same burst of 429s: no second cut
    assert limiter.requests_per_minute == pytest.approx(300)
    limiter.on_success()  # a reply to a call sent before the cut: no recovery yet
    assert limiter.requests_per_minute == pytest.approx(300)
    clock.now += 1.5
    rates: list[float] = []
    for _ in range(10):
        limiter.on_success()
        rate = limiter.requests_per_minute
        assert rate is not None
        rates.append(rate)
    assert rates == sorted(rates)  # additive increase, never a jump down
    assert rates[0] == pytest.approx(360)
    assert rates[-1] == pytest.approx(600)  # back to the configured rate, not above
    limiter.on_success()
    assert limiter.requests_per_minute == pytest.approx(600)


async def test_cut_rate_paces_callers() -> None:
    limiter = RateLimiter(1200, None)
    limiter.on_rate_limited(0.0)  # now 600/min: 0.1 s apart
    elapsed = await timed_acquires(limiter, 6)
    assert 0.45 <= elapsed < 1.0


def test_rate_cut_stops_at_the_floor() -> None:
    limiter = RateLimiter(10, None, min_requests_per_minute=8)
    limiter.on_rate_limited(0.0)
    assert limiter.requests_per_minute == pytest.approx(8)


async def test_unlimited_limiter_derives_a_rate_from_traffic(clock: FakeClock) -> None:
    limiter = RateLimiter(None, None, recovery=0.25)
    for _ in range(100):
        await limiter.acquire()
    clock.now += 0.5
    limiter.on_rate_limited(0.0)
    derived = limiter.requests_per_minute
    assert derived is not None
    # 100 requests in the last half second: 200/s observed, cut to half.
    assert derived == pytest.approx(100 / 0.5 * 60 / 2, rel=0.1)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()  # now paced
    clock.now += 1.5
    limiter.on_success()
    assert limiter.requests_per_minute == pytest.approx(derived * 1.5)
    limiter.on_success()
    assert limiter.requests_per_minute is None  # back to unlimited
    assert await timed_acquires(limiter, 100) < 0.5


def test_an_early_429_does_not_derive_a_crawling_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(None, None)
    for _ in range(4):
        assert limiter.try_acquire()
    clock.now += 0.002
    limiter.on_rate_limited(0.0)
    derived = limiter.requests_per_minute
    assert derived is not None
    assert derived >= 100 * 60  # four calls in 2 ms is fast traffic, not 4 per second


def test_works_across_successive_event_loops() -> None:
    limiter = RateLimiter(1200, None)
    abandoned = asyncio.new_event_loop()

    async def leave_a_waiter() -> None:
        await limiter.acquire()
        queued = abandoned.create_task(limiter.acquire())
        await asyncio.sleep(0)
        assert not queued.done()
        assert limiter.waiting == 1

    async def use() -> float:
        return await timed_acquires(limiter, 3)

    abandoned.run_until_complete(leave_a_waiter())
    abandoned.close()  # closed with the waiter still queued, never cancelled
    assert asyncio.run(use()) < 1.0
    assert asyncio.run(use()) < 1.0


def test_construction_does_not_need_a_loop() -> None:
    limiter = RateLimiter(60, 1000)  # no running loop here
    assert limiter.requests_per_minute == 60
    assert limiter.tokens_per_minute == 1000
    assert "RateLimiter(" in repr(limiter)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests_per_minute": 0, "tokens_per_minute": None},
        {"requests_per_minute": None, "tokens_per_minute": -1},
        {"requests_per_minute": 1, "tokens_per_minute": None, "burst_seconds": -1},
        {"requests_per_minute": 1, "tokens_per_minute": None, "backoff_factor": 1.5},
        {"requests_per_minute": 1, "tokens_per_minute": None, "recovery": 0},
    ],
)
def test_invalid_arguments(kwargs: dict[str, float | None]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


async def test_negative_tokens_rejected() -> None:
    with pytest.raises(ValueError, match="tokens"):
        await RateLimiter(None, None).acquire(-1)


def test_only_replies_to_calls_sent_after_the_cut_restore_the_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(600, None, recovery=0.1)
    sent_before = clock.now
    clock.now += 0.01
    limiter.on_rate_limited(0.0)
    assert limiter.requests_per_minute == pytest.approx(300)
    limiter.on_success(sent_before)  # answered after the cut, but sent before it
    assert limiter.requests_per_minute == pytest.approx(300)
    clock.now += 0.05  # well inside a second: the evidence is fresh all the same
    limiter.on_success(clock.now - 0.01)
    assert limiter.requests_per_minute == pytest.approx(360)


def test_a_429_for_a_call_sent_after_the_cut_cuts_again(clock: FakeClock) -> None:
    limiter = RateLimiter(600, None)
    sent_before = clock.now
    clock.now += 0.01
    limiter.on_rate_limited(0.0, sent_before)
    assert limiter.requests_per_minute == pytest.approx(300)
    limiter.on_rate_limited(0.0, sent_before)  # the same burst: already answered
    assert limiter.requests_per_minute == pytest.approx(300)
    clock.now += 0.05
    limiter.on_rate_limited(0.0, clock.now - 0.01)  # sent at the cut rate, still refused
    assert limiter.requests_per_minute == pytest.approx(150)


def test_a_lone_429_among_many_requests_slows_a_little_and_pauses_nobody(clock: FakeClock) -> None:
    """Backoff follows the evidence: one refusal in a hundred requests is not a burst."""
    limiter = RateLimiter(6000, None)
    for _ in range(100):
        limiter.on_sent()
    limiter.on_rate_limited(1.0)
    assert limiter.paused_for == 0.0  # only the refused call waits its Retry-After
    rate = limiter.requests_per_minute
    assert rate is not None
    assert 0.85 * 6000 <= rate < 6000
    clock.now += 0.01
    for _ in range(10):  # recovers within a few successes
        limiter.on_success(clock.now)
    assert limiter.requests_per_minute == pytest.approx(6000)


def test_a_run_of_429s_pauses_everyone_and_cuts_hard(clock: FakeClock) -> None:
    limiter = RateLimiter(6000, None)
    for _ in range(100):
        limiter.on_sent()
    for _ in range(6):
        clock.now += 0.01
        limiter.on_rate_limited(1.0, clock.now - 0.001)  # each sent after the last cut
    assert limiter.paused_for > 0.9
    rate = limiter.requests_per_minute
    assert rate is not None
    assert rate < 0.5 * 6000


def test_an_unpaced_endpoint_does_not_start_pacing_on_a_stray_429(clock: FakeClock) -> None:
    limiter = RateLimiter(None, None)
    for _ in range(100):
        assert limiter.try_acquire()
        limiter.on_sent()
    limiter.on_rate_limited(1.0)
    assert limiter.requests_per_minute is None
    assert limiter.paused_for == 0.0
    assert all(limiter.try_acquire() for _ in range(100))


@pytest.mark.parametrize(("retry_after", "cap", "pause"), [(30.0, 0.5, 0.5), (0.2, 0.5, 0.2)])
def test_a_burst_pause_is_bounded_by_the_callers_cap(
    clock: FakeClock, retry_after: float, cap: float, pause: float
) -> None:
    """The refused call's ``max_pause`` (its run's max_retry_after) bounds the pause
    a burst sets, below the limiter's own ``max_backoff``; a shorter server delay
    is kept as it is."""
    limiter = RateLimiter(None, None, max_backoff=5.0)
    for _ in range(6):
        clock.now += 0.01
        limiter.on_rate_limited(retry_after, max_pause=cap)
    assert limiter.paused_for == pytest.approx(pause)
    limiter.on_rate_limited(30.0)
    assert limiter.paused_for == pytest.approx(5.0)  # without a cap, max_backoff
