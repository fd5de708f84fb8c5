"""Rate limits and sick pool members never stall a run (issue 14, points 6-9 and 12).

Every test runs real modules through the scheduler, the ``ResourceManager`` and
the lean client to simulators on loopback, and judges the run by what the
servers saw (requests per member, 429s) and by counts and orderings, not by
tight wall times: the machine these run on is small and shared. Each bound on
elapsed time is several times what the fixed code needs and far below what
the old code took (noted per test).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable
from typing import Any

import pytest

from plait import LLMInference, Module
from plait.errors import QuotaExceededError, RateLimitError
from plait.execution.results import BatchResult
from plait.resources import ResourceManager
from plait.testing import Simulator

MODEL = "sim-model"


class Echo(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    def forward(self, text: Any) -> Any:
        return self.llm(text)


def endpoint(base_url: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "base_url": base_url, "api_key": None, **fields}


def prompts(count: int) -> list[str]:
    return [f"item {i}" for i in range(count)]


def echoes(count: int) -> list[str]:
    return [f"ECHO: item {i}" for i in range(count)]


def always(kind: str) -> Any:
    return lambda seq, body: kind


async def collect(batch: Awaitable[list[BatchResult]]) -> list[BatchResult]:
    """A streaming batch awaited whole: every input's result, in input order."""
    return sorted(await batch, key=lambda result: result.index)


# -- point 6: a member that answers 429 forever ---------------------------------------


async def test_a_pool_member_that_429s_forever_does_not_stall_the_batch() -> None:
    """Calls move off a member that keeps refusing; the healthy member does the work.

    Before: the refusing member kept being picked (a 429 returns at once, so it
    always looked least loaded), its limiter cut its rate to 1 RPM, and the calls
    queued for it waited there: 20 of 40 inputs were unfinished after 60 s.
    """
    count = 40
    async with (
        Simulator(fault=always("429"), retry_after=1.0) as refusing,
        Simulator(latency=0.01) as healthy,
    ):
        config = {
            "fast": [
                endpoint(refusing.base_url, model="refusing", max_concurrent=4),
                endpoint(healthy.base_url, model="healthy", max_concurrent=4),
            ]
        }
        manager = ResourceManager(config)
        async with manager:
            module = Echo().bind(resources=manager, max_concurrent=16)
            started = time.monotonic()
            outputs = await asyncio.wait_for(module(prompts(count)), timeout=60)
            elapsed = time.monotonic() - started
        refused = refusing.stats().requests
    assert outputs == echoes(count)
    # Each input is sent to the refusing member at most about once before the
    # pool stops trusting it; it is tried again only after its cool-down.
    assert refused <= count // 2
    assert elapsed < 20  # about 2 s here


async def test_a_single_endpoint_that_429s_forever_fails_within_max_rate_limit_wait() -> None:
    """Nowhere else to go: each call gives up with RateLimitError once its wait is spent.

    Before: no call ever failed (the 50 requeues were spread over minutes by a
    limiter cut to 1 RPM); 10 inputs were unfinished after 60 s.
    """
    count = 10
    async with (
        Simulator(fault=always("429"), retry_after=0.2) as sim,
        ResourceManager({"fast": endpoint(sim.base_url, max_concurrent=4)}) as manager,
    ):
        module = Echo().bind(
            resources=manager, max_concurrent=10, streaming=True, max_rate_limit_wait=2.0
        )
        started = time.monotonic()
        results = await asyncio.wait_for(collect(module(prompts(count))), timeout=60)
        elapsed = time.monotonic() - started
    assert len(results) == count
    assert all(isinstance(result.error, RateLimitError) for result in results)
    assert all("max_rate_limit_wait" in "\n".join(result.error.__notes__) for result in results)  # type: ignore[union-attr]
    assert elapsed >= 2.0
    assert elapsed < 20  # about 3 s here


async def test_insufficient_quota_is_permanent_at_once() -> None:
    """A spent quota is not a busy server: no wait fixes it, so nothing is retried."""
    count = 5
    async with Simulator(fault=always("quota")) as sim:
        async with ResourceManager({"fast": endpoint(sim.base_url)}) as manager:
            module = Echo().bind(resources=manager, streaming=True)
            results = await asyncio.wait_for(collect(module(prompts(count))), timeout=30)
        stats = sim.stats()
    assert [type(result.error) for result in results] == [QuotaExceededError] * count
    assert "quota" in str(results[0].error)
    assert stats.requests == count


# -- point 7: Retry-After is capped ------------------------------------------------------


async def test_a_retry_after_of_a_day_is_capped_by_max_retry_after() -> None:
    """Before: the call was requeued for 86,400 s (the test's guard fired)."""
    first = {"seen": False}

    def once(seq: int, body: dict[str, Any]) -> str | None:
        if not first["seen"]:
            first["seen"] = True
            return "429"
        return None

    async with Simulator(fault=once, retry_after=86_400) as sim:
        async with ResourceManager({"fast": endpoint(sim.base_url)}) as manager:
            module = Echo().bind(resources=manager, max_retry_after=0.5)
            started = time.monotonic()
            output = await asyncio.wait_for(module("x"), timeout=30)
            elapsed = time.monotonic() - started
        stats = sim.stats()
    assert output == "ECHO: x"
    assert stats.rate_limited == 1
    assert elapsed < 10  # about 0.5 s here


# -- point 8: sporadic 429s cost little ----------------------------------------------------


async def _sporadic_run(fault_rate: float) -> float:
    async with Simulator(
        latency=0.02, fault_rate=fault_rate, faults=["429"], retry_after=0.2, seed=5
    ) as sim:
        async with ResourceManager({"fast": endpoint(sim.base_url, max_concurrent=40)}) as manager:
            module = Echo().bind(resources=manager, max_concurrent=80)
            started = time.monotonic()
            outputs = await asyncio.wait_for(module(prompts(1_000)), timeout=120)
            elapsed = time.monotonic() - started
        if fault_rate:
            assert sim.stats().rate_limited >= 10
    assert outputs == echoes(1_000)
    return elapsed


async def test_sporadic_429s_cost_little_throughput() -> None:
    """2% of replies refused: each refused call waits its own Retry-After; the rest go on.

    Before: every 429 paused the whole endpoint and halved its rate, so the
    run took about 12x as long as the one without them. ``make bench`` holds
    the real target (>= 0.8 at 1%); this bound only catches a collapse.
    """
    clean = await _sporadic_run(0.0)
    sporadic = await _sporadic_run(0.02)
    assert clean / sporadic >= 0.4


# -- point 9: a stalled member ------------------------------------------------------------


async def test_a_stalled_pool_member_stops_receiving_calls() -> None:
    """Calls stop going to a member whose requests hang, and the ones queued there move.

    Before: both members' queues grew evenly (in-flight counts looked balanced),
    so half the inputs waited behind the stalled slots and were then sent into
    the stall themselves: the stalled member saw about 100 of 200 requests.
    """
    count = 200
    async with (
        Simulator(fault=always("stall"), stall_seconds=30) as stalled,
        Simulator(latency=0.01) as healthy,
    ):
        config = {
            "fast": [
                endpoint(stalled.base_url, model="stalled", max_concurrent=4, timeout=1.5),
                endpoint(healthy.base_url, model="healthy", max_concurrent=4, timeout=1.5),
            ]
        }
        async with ResourceManager(config) as manager:
            module = Echo().bind(
                resources=manager, max_concurrent=32, max_task_retries=5, streaming=True
            )
            started = time.monotonic()
            finished: list[float] = []
            async for result in module(prompts(count)):
                assert result.error is None
                finished.append(time.monotonic() - started)
        seen = stalled.stats().requests
    assert len(finished) == count
    assert seen <= 16
    # Only the few inputs sent into the stall wait for their timeout; the rest
    # finish at the healthy member's pace.
    late = sum(1 for at in finished if at > 1.5)
    assert late <= 16


async def test_a_dead_pool_member_gets_few_first_attempts_under_load() -> None:
    """A member that refuses connections is out after a couple of failures."""
    count = 200
    async with Simulator(latency=0.01) as healthy:
        dead_url = _closed_port_url()
        config = {
            "fast": [
                endpoint(dead_url, model="dead", max_concurrent=4),
                endpoint(healthy.base_url, model="healthy", max_concurrent=4),
            ]
        }
        async with ResourceManager(config) as manager:
            module = Echo().bind(
                resources=manager, max_concurrent=32, max_task_retries=5, task_retry_delay=0.01
            )
            outputs = await asyncio.wait_for(module(prompts(count)), timeout=60)
    usage = manager.usage()["fast"]
    assert outputs == echoes(count)
    assert usage.failures <= 12


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- point 12: connections a run opened are closed when its loop ends ---------------------


_ASYNCIO_RUN_SCRIPT = """
import asyncio, gc, sys
from plait import LLMInference, Module
from plait.resources import ResourceConfig

class Echo(Module):
    def __init__(self):
        super().__init__()
        self.llm = LLMInference("fast")
    def forward(self, text):
        return self.llm(text)

config = ResourceConfig({{"fast": {{"model": "m", "base_url": "{url}", "api_key": None}}}})
module = Echo().bind(resources=config)

async def main():
    return await module(["a", "b", "c"])

print(asyncio.run(main()))
print(asyncio.run(main()))
del module
gc.collect()
"""


def test_the_documented_asyncio_run_pattern_leaves_no_unclosed_session() -> None:
    """Before: "Unclosed client session" and "Unclosed connector" on stderr, per run."""
    with Simulator(latency=0.001) as sim:
        script = textwrap.dedent(_ASYNCIO_RUN_SCRIPT.format(url=sim.base_url))
        env = {**os.environ, "PYTHONWARNINGS": "always"}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ECHO: a") == 2
    assert "nclosed" not in done.stderr, done.stderr
    assert "Task was destroyed" not in done.stderr, done.stderr


async def test_resource_manager_is_an_async_context_manager() -> None:
    async with Simulator() as sim:
        async with ResourceManager({"fast": endpoint(sim.base_url)}) as manager:
            assert await Echo().bind(resources=manager)("x") == "ECHO: x"
            clients = [c for state in manager._states.values() for c in state.clients if c]
            assert clients
        assert manager._states == {}
    assert all(
        getattr(client, "_session", None) is None or client._session.closed for client in clients
    )  # type: ignore[attr-defined]


pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")


async def test_the_pause_after_a_burst_of_429s_is_capped_by_max_retry_after_too() -> None:
    """A burst pauses the endpoint for the server's delay, but never longer than the
    run's ``max_retry_after``: a run that says it waits at most 0.3 s per 429 does.

    Before: the endpoint-wide pause was min(Retry-After, 5 s) whatever the run
    said, so 8 inputs refused in a burst with ``Retry-After: 30`` finished after
    more than 5 s; after, in about 1.3 s.
    """
    burst = 6

    def refuse_first(seq: int, body: dict[str, Any]) -> str | None:
        return "429" if seq < burst else None

    async with Simulator(fault=refuse_first, retry_after=30) as sim:
        async with ResourceManager({"fast": endpoint(sim.base_url, max_concurrent=8)}) as manager:
            module = Echo().bind(resources=manager, max_retry_after=0.3)
            started = time.monotonic()
            outputs = await asyncio.wait_for(module(prompts(8)), timeout=30)
            elapsed = time.monotonic() - started
        stats = sim.stats()
    assert outputs == echoes(8)
    assert stats.rate_limited == burst
    assert elapsed < 4  # about 1.3 s here; over 5 s before
