"""ResourceManager, endpoint pools and usage accounting, with an in-process fake client."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping

import pytest

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import (
    PermanentError,
    RateLimitError,
    TransientError,
    UnknownAliasError,
)
from plait.resources import (
    AliasUsage,
    ResourceConfig,
    ResourceManager,
    format_usage,
)
from plait.resources.pool import EndpointPool
from plait.resources.usage import LatencyHistogram
from plait.testing import Handler, MockClient, Reply

KEY = "sk-manager-secret-987654321"


def ok(request: ChatRequest) -> ChatResponse:
    return ChatResponse(content="ok", model=request.model, input_tokens=7, output_tokens=3)


def answering(faults: Mapping[str, Exception]) -> Handler:
    """Every endpoint answers ``ok`` except the models in ``faults`` (read at each
    call, so a test can change them), which fail with their error."""

    def handler(request: ChatRequest) -> Reply:
        fault = faults.get(request.model)
        return ok(request) if fault is None else fault

    return handler


def request(text: str = "hello") -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}])


# -- aliases ------------------------------------------------------------------------


async def test_unknown_alias_fails_before_any_call() -> None:
    client = MockClient(ok)
    manager = ResourceManager(
        {"fast": {"model": "m"}, "slow": {"model": "n"}}, client_factory=client.factory
    )
    with pytest.raises(UnknownAliasError) as info:
        manager.check_aliases(["fast", "fsat", "judge", "fsat"])
    message = str(info.value)
    assert "'fsat'" in message
    assert "'judge'" in message
    assert "configured aliases: 'fast', 'slow'" in message
    assert "'fsat' -> 'fast'" in message
    manager.check_aliases(["fast", "slow"])
    with pytest.raises(UnknownAliasError, match="unknown alias 'nope'"):
        await manager.complete("nope", request())
    assert client.endpoints == []


def test_manager_accepts_a_mapping_or_a_config() -> None:
    config = ResourceConfig({"fast": {"model": "m"}})
    assert ResourceManager(config).config is config
    assert ResourceManager({"fast": {"model": "m"}}).aliases == ("fast",)


def test_repr_shows_aliases_and_models_never_keys() -> None:
    manager = ResourceManager(
        {"fast": {"model": "m", "api_key": KEY}, "pool": [{"model": "a"}, {"model": "b"}]}
    )
    text = repr(manager)
    assert text == "ResourceManager(fast=['m'], pool=['a', 'b'])"
    assert KEY not in text


def test_retry_limit() -> None:
    manager = ResourceManager(
        {
            "plain": {"model": "m"},
            "strict": {"model": "m", "max_retries": 0},
            "pool": [{"model": "a", "max_retries": 2}, {"model": "b", "max_retries": 5}],
        }
    )
    assert manager.retry_limit("plain") is None
    assert manager.retry_limit("strict") == 0
    assert manager.retry_limit("pool") == 5
    with pytest.raises(UnknownAliasError):
        manager.retry_limit("nope")


# -- calls --------------------------------------------------------------------------


async def test_model_is_filled_from_the_endpoint() -> None:
    client = MockClient(ok)
    manager = ResourceManager({"fast": {"model": "gpt-4o-mini"}}, client_factory=client.factory)
    req = request()
    response = await manager.complete("fast", req)
    assert req.model == "gpt-4o-mini"
    assert response.model == "gpt-4o-mini"
    assert [sent.model for sent in client.requests] == ["gpt-4o-mini"]


async def test_max_concurrent_is_never_exceeded() -> None:
    busy = MockClient(ok, latency=0.02)
    manager = ResourceManager(
        {"fast": {"model": "m", "max_concurrent": 3}}, client_factory=busy.factory
    )
    await asyncio.wait_for(
        asyncio.gather(*(manager.complete("fast", request()) for _ in range(30))), timeout=5
    )
    assert len(busy.requests) == 30
    assert busy.peak == 3  # reached, never exceeded


async def test_max_concurrent_holds_with_cancellations() -> None:
    busy = MockClient(ok, latency=0.01)
    manager = ResourceManager(
        {"fast": {"model": "m", "max_concurrent": 2}}, client_factory=busy.factory
    )
    tasks = [asyncio.create_task(manager.complete("fast", request())) for _ in range(20)]
    await asyncio.sleep(0)
    for task in tasks[1::3]:
        task.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)
    assert busy.peak == 2
    # Every slot came back: a new burst still gets both.
    busy.peak = 0
    await asyncio.gather(*(manager.complete("fast", request()) for _ in range(6)))
    assert busy.peak == 2


async def test_usage_counts() -> None:
    faults: dict[str, Exception] = {}
    client = MockClient(answering(faults), latency=0.005)
    manager = ResourceManager({"fast": {"model": "m"}}, client_factory=client.factory)
    for attempt in (0, 0, 1):
        await manager.complete("fast", request(), attempt=attempt)
    faults["m"] = PermanentError("bad request", status_code=400)
    with pytest.raises(PermanentError):
        await manager.complete("fast", request())
    snapshot = manager.usage()["fast"]
    faults["m"] = RateLimitError("slow down", retry_after=0.0)
    with pytest.raises(RateLimitError):
        await manager.complete("fast", request(), attempt=2)

    usage = manager.usage()["fast"]
    assert isinstance(usage, AliasUsage)
    assert usage.requests == 5
    assert usage.successes == 3
    assert usage.failures == 2
    assert usage.retries == 2
    assert usage.rate_limited == 1
    assert usage.input_tokens == 21
    assert usage.output_tokens == 9
    assert usage.total_tokens == 30
    assert usage.cache_hits == 0
    assert 0.004 < usage.latency_p50 < 0.5
    assert usage.latency_p50 <= usage.latency_p90 <= usage.latency_p99 <= usage.latency_max
    assert usage.latency_mean > 0
    assert snapshot.requests == 4  # snapshots do not change afterwards

    table = format_usage(manager.usage())
    assert table.splitlines()[0].split()[:3] == ["alias", "requests", "ok"]
    assert table.splitlines()[1].split()[:7] == ["fast", "5", "3", "2", "2", "1", "21"]

    manager.reset_usage()
    assert manager.usage()["fast"].requests == 0


async def test_429_pauses_the_endpoint_and_cuts_its_rate() -> None:
    faults: dict[str, Exception] = {"m": RateLimitError("429", retry_after=0.3)}
    client = MockClient(answering(faults))
    manager = ResourceManager(
        {"fast": {"model": "m", "rate_limit": 6000}}, client_factory=client.factory
    )
    with pytest.raises(RateLimitError):
        await manager.complete("fast", request())
    limiter = manager.limiter("fast")
    assert limiter.paused_for > 0.2
    assert limiter.requests_per_minute == pytest.approx(3000)
    faults.clear()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(manager.complete("fast", request()), timeout=2)
    assert loop.time() - start >= 0.25  # waited out the server's Retry-After
    # This call was sent after the cut, so its success is evidence for the
    # new rate: recovery starts.
    assert limiter.requests_per_minute is not None
    assert limiter.requests_per_minute > 3000


async def test_token_rate_limit_is_settled_with_real_usage() -> None:
    # 6,000 tokens/min = 100/s. Each call is estimated at ceil(400/4) + 50 =
    # 150 tokens (1.5 s of budget) but reports 10 (0.1 s), so with the
    # correction each following call waits ~0.1 s; without it, 1.5 s.
    manager = ResourceManager(
        {"fast": {"model": "m", "token_rate_limit": 6000}}, client_factory=MockClient(ok).factory
    )
    req = ChatRequest(messages=[{"role": "user", "content": "x" * 400}], max_tokens=50)
    for _ in range(3):
        await asyncio.wait_for(manager.complete("fast", req), timeout=1)
    assert manager.usage()["fast"].successes == 3


async def test_errors_are_reraised_unchanged() -> None:
    error = TransientError("503", status_code=503)
    manager = ResourceManager(
        {"fast": {"model": "m"}}, client_factory=MockClient(answering({"m": error})).factory
    )
    with pytest.raises(TransientError) as info:
        await manager.complete("fast", request())
    assert info.value is error


async def test_failover_within_a_pool() -> None:
    client = MockClient(answering({"bad": TransientError("connection reset")}))
    manager = ResourceManager(
        {"pool": [{"model": "bad"}, {"model": "good"}]}, client_factory=client.factory
    )
    answers = 0
    for _ in range(20):
        for _attempt in range(3):  # what the scheduler's retry does
            try:
                await manager.complete("pool", request())
            except TransientError:
                continue
            answers += 1
            break
    assert answers == 20
    calls = Counter(sent.model for sent in client.requests)
    assert calls["bad"] == 2  # tripped after two failures in a row, then cooling down
    assert calls["good"] == 20


async def test_clients_are_per_event_loop_and_state_is_shared() -> None:
    client = MockClient(ok)
    manager = ResourceManager({"fast": {"model": "m"}}, client_factory=client.factory)

    async def call() -> None:
        await manager.complete("fast", request())
        await manager.complete("fast", request())

    await asyncio.to_thread(asyncio.run, call())
    await asyncio.to_thread(asyncio.run, call())
    made = [endpoint.model for endpoint in client.endpoints]
    assert made == ["m", "m"]  # one client per loop, reused within it
    assert manager.usage()["fast"].successes == 4  # usage spans loops

    # Each asyncio.run closed the client it opened as its loop shut down.
    assert client.closed == 2
    await call()
    assert [endpoint.model for endpoint in client.endpoints] == ["m", "m", "m"]
    await manager.aclose()
    assert client.closed - 2 == 1  # only this loop's client
    await call()  # a closed manager reopens on demand
    assert client.endpoints[-1].model == "m"
    assert len(client.endpoints) == 4
    await manager.aclose()


def test_manager_and_config_are_built_without_a_loop() -> None:
    manager = ResourceManager({"fast": {"model": "m", "rate_limit": 60}})
    assert manager.limiter("fast").requests_per_minute == 60


# -- real client against the simulator -----------------------------------------------


async def test_with_lean_client_against_the_simulator() -> None:
    from plait.testing import Simulator

    async with Simulator(latency=0.02, rate_limit=1200) as sim:
        manager = ResourceManager(
            {
                "fast": {
                    "model": "sim-model",
                    "base_url": sim.base_url,
                    "api_key": KEY,
                    "max_concurrent": 2,
                    "rate_limit": 1200,
                }
            }
        )
        try:
            replies = await asyncio.wait_for(
                asyncio.gather(*(manager.complete("fast", request(f"q{i}")) for i in range(12))),
                timeout=10,
            )
        finally:
            await manager.aclose()
        stats = sim.stats()
    assert [r.content for r in replies] == [f"ECHO: q{i}" for i in range(12)]
    assert stats.peak_concurrency <= 2
    assert stats.rate_limited == 0
    assert stats.models == {"sim-model": 12}
    usage = manager.usage()["fast"]
    assert usage.successes == 12
    assert usage.input_tokens > 0


# -- pool ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pool_spreads_sequential_picks_by_weight() -> None:
    pool = EndpointPool(["a", "b", "c"], [3.0, 1.0, 1.0])
    counts: Counter[str] = Counter()
    for _ in range(500):
        member = pool.pick()
        counts[member.item] += 1
        pool.release(member)
    assert counts == {"a": 300, "b": 100, "c": 100}


def test_pool_prefers_the_least_loaded_by_weight() -> None:
    pool = EndpointPool(["a", "b"], [2.0, 1.0])
    held = [pool.pick() for _ in range(30)]  # none released: load decides
    counts = Counter(m.item for m in held)
    assert counts == {"a": 20, "b": 10}
    rng = random.Random(1)
    for _ in range(200):  # random completions keep the ratio near the weights
        done = held.pop(rng.randrange(len(held)))
        pool.release(done)
        held.append(pool.pick())
    loads = Counter(m.item for m in held)
    assert abs(loads["a"] - 20) <= 1


def test_failing_endpoint_cools_down_and_recovers() -> None:
    clock = Clock()
    pool = EndpointPool(["a", "b"], clock=clock)
    a = pool.members[0]
    pool.record_failure(a)
    assert a.cooldown_until == 0  # one failure is not enough
    pool.record_failure(a)
    assert [m.item for m in pool.healthy()] == ["b"]
    assert all(pool.pick().item == "b" for _ in range(10))

    clock.now += 1.01  # first cool-down is 1 s; now half-open
    assert {m.item for m in pool.healthy()} == {"a", "b"}
    pool.record_failure(a)  # one failure while half-open trips again, for 2 s
    clock.now += 1.5
    assert [m.item for m in pool.healthy()] == ["b"]
    clock.now += 0.6
    assert a in pool.healthy()
    pool.record_success(a)  # one success closes the breaker
    pool.record_failure(a)
    assert a in pool.healthy()  # back to needing two in a row


def test_cooldown_doubles_up_to_the_cap() -> None:
    clock = Clock()
    pool = EndpointPool(["a", "b"], clock=clock, max_cooldown=30.0)
    a = pool.members[0]
    lengths = []
    for _ in range(8):
        pool.record_failure(a)
        pool.record_failure(a)
        lengths.append(a.cooldown_until - clock.now)
        clock.now = a.cooldown_until
    assert lengths == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_failures_during_cooldown_do_not_extend_it() -> None:
    clock = Clock()
    pool = EndpointPool(["a", "b"], clock=clock)
    a = pool.members[0]
    pool.record_failure(a)
    pool.record_failure(a)
    end = a.cooldown_until
    for _ in range(5):  # stragglers sent before the trip
        pool.record_failure(a)
    assert a.cooldown_until == end


def test_all_cooling_picks_the_one_back_first() -> None:
    clock = Clock()
    pool = EndpointPool(["a", "b", "c"], clock=clock)
    for index, at in ((0, 100.5), (1, 100.0), (2, 100.2)):
        clock.now = at
        pool.record_failure(pool.members[index])
        pool.record_failure(pool.members[index])
    clock.now = 100.6
    assert pool.healthy() == []
    assert pool.pick().item == "b"  # its cool-down ends first (101.0)


def test_pool_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EndpointPool([])
    with pytest.raises(ValueError, match="weights"):
        EndpointPool(["a"], [0.0])
    with pytest.raises(ValueError, match="weights"):
        EndpointPool(["a", "b"], [1.0])


# -- usage ---------------------------------------------------------------------------------


def test_latency_percentiles_are_close_and_memory_is_bounded() -> None:
    histogram = LatencyHistogram()
    samples = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s
    random.Random(0).shuffle(samples)
    for value in samples * 20:
        histogram.record(value)
    assert histogram.count == 20_000
    assert histogram.percentile(0.5) == pytest.approx(0.5, rel=0.03)
    assert histogram.percentile(0.9) == pytest.approx(0.9, rel=0.03)
    assert histogram.percentile(0.99) == pytest.approx(0.99, rel=0.03)
    assert histogram.max == 1.0
    assert histogram.mean == pytest.approx(0.5005)
    size = len(histogram.counts)
    for _ in range(1000):
        histogram.record(1e6)  # far beyond the last bucket
        histogram.record(0.0)
    assert len(histogram.counts) == size
    assert histogram.percentile(1.0) == 1e6


def test_empty_usage() -> None:
    usage = AliasUsage()
    assert usage.latency_p50 == 0.0
    assert usage.latency_mean == 0.0
    assert usage.as_dict()["requests"] == 0
    assert "-" in format_usage({"idle": usage})
