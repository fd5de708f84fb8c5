"""Reliability over real loopback HTTP: faults, sustained load and cancellation.

DESIGN section 9 promises that with a fifth of all responses failing, every
input of a 1,000-input batch still ends with the right output, none lost,
duplicated or reordered. These tests run whole pipelines through the resource
manager and a real client against the simulator, then reconcile three ledgers
that are kept independently: the outputs, the manager's usage counters and
what the server says it saw. They also check that long runs and abandoned runs
give back everything they took: tasks, sockets, server slots and memory.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import pytest

from plait import ExecutionSettings, LLMInference, Module
from plait.resources import AliasUsage, ResourceConfig, ResourceManager
from plait.testing import Simulator
from plait.testing._config import FAULT_KINDS

Client = Literal["lean", "openai"]
GUARD = 120.0
"""Upper bound on any one run, so a hang fails the test instead of the suite."""

SPREAD_BLOCK = 100
SPREAD_AT = (1, 6, 11, 16, 21, 26, 31, 36, 41, 46, 61, 66, 71, 76, 81, 86, 91, 96)
SPREAD: dict[int, str] = {
    **{at: ("503", "reset", "malformed")[i % 3] for i, at in enumerate(SPREAD_AT)},
    98: "stall",
}
"""Faults at these positions of every 100 requests: six each of 503, reset and
malformed, and one stall (the rarest, since each costs a full timeout)."""

BURST_BLOCK = 1_000
BURST = range(250, 260)
"""Ten 429s in a row at these positions of every 1,000 requests; they fall where
the spread has a gap, so every 1,000 requests hold exactly 200 faults (20%)."""


def scripted_fault(seq: int, body: dict[str, Any]) -> str | None:
    if seq % BURST_BLOCK in BURST:
        return "429"
    return SPREAD.get(seq % SPREAD_BLOCK)


ENDPOINT_TIMEOUT = 2.0
"""Stalled requests hang far longer than this, so each one is a client timeout;
it is also far above the event-loop lag of a loaded 2-core machine, so no
request that was answered ever counts as timed out."""


def config_for(
    base_url: str, *, client: Client, max_concurrent: int, timeout: float = 10.0
) -> ResourceConfig:
    return ResourceConfig(
        {
            "fast": {
                "model": "sim-model",
                "base_url": base_url,
                "api_key": "",
                "client": client,
                "max_concurrent": max_concurrent,
                "timeout": timeout,
            }
        }
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident set size now (not the peak), from /proc like the descriptor count."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll ``condition`` (cleanup finishes over a few loop iterations) up to ``limit``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, f"not reached within {limit} s: {what}"
        await asyncio.sleep(0.01)


class ThreeStage(Module):
    """a -> b -> c, each prompt embedding the reply before it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = LLMInference("fast")
        self.b = LLMInference("fast")
        self.c = LLMInference("fast")

    def forward(self, question: str) -> Any:
        first = self.a(question)
        second = self.b(f"B[{first}]")
        return self.c(f"C[{second}]")


def stage_prompts(question: str) -> list[str]:
    """The three prompts input ``question`` sends, given the simulator's echo replies."""
    a = question
    b = f"B[ECHO: {a}]"
    c = f"C[ECHO: {b}]"
    return [a, b, c]


# -- faults ------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "count"), [("lean", 1_000), ("openai", 100)])
async def test_every_input_survives_a_fifth_of_responses_failing_in_every_way(
    client: Client, count: int
) -> None:
    completed: Counter[str] = Counter()

    def reply(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        completed[prompt] += 1
        return f"ECHO: {prompt}"

    questions = [f"question {i}" for i in range(count)]
    async with Simulator(fault=scripted_fault, reply=reply, stall_seconds=30.0) as sim:
        config = config_for(
            sim.base_url, client=client, max_concurrent=64, timeout=ENDPOINT_TIMEOUT
        )
        manager = ResourceManager(config)
        module = ThreeStage().bind(
            resources=manager, max_concurrent=64, max_task_retries=10, task_retry_delay=0.01
        )
        try:
            outputs = await asyncio.wait_for(module(questions), GUARD)
        finally:
            await manager.aclose()
        await wait_until(lambda: sim.stats().in_flight == 0, "server in_flight back to 0")
        stats = sim.stats()
    usage = manager.usage()["fast"]

    # Right output for every input, in input order.
    assert outputs == [f"ECHO: {stage_prompts(q)[2]}" for q in questions]
    # Every call succeeded on the server exactly once: nothing lost or run twice.
    assert completed == Counter(p for q in questions for p in stage_prompts(q))
    calls = 3 * count
    assert usage.successes == stats.completed == calls
    # The client's ledger and the server's agree on every request and every fault.
    scripted = Counter(scripted_fault(seq, {}) for seq in range(stats.requests))
    del scripted[None]
    assert stats.faults == scripted
    assert set(stats.faults) == set(FAULT_KINDS)
    faults = sum(stats.faults.values())
    assert usage.requests == stats.requests == calls + faults
    assert usage.failures == faults
    assert abs(faults / stats.requests - 0.2) < 0.02
    assert usage.rate_limited == stats.faults["429"] == stats.rate_limited
    # 429s are requeued without counting as a retry; every other fault costs one.
    assert usage.failures - usage.rate_limited <= usage.retries <= usage.failures


# -- sustained load ----------------------------------------------------------------


async def run_flat(config: ResourceConfig, count: int) -> tuple[AliasUsage, int]:
    """``count`` single-call inputs at concurrency 200 on a fresh manager, closed after.

    Returns the usage and the number of open descriptors just before closing,
    which shows the connections the run held.
    """
    manager = ResourceManager(config)
    module = LLMInference("fast").bind(resources=manager, max_concurrent=200)
    prompts = [f"load {i}" for i in range(count)]
    try:
        outputs = await asyncio.wait_for(module(prompts), GUARD)
        assert outputs == [f"ECHO: {p}" for p in prompts]
        held = open_fds()
    finally:
        await manager.aclose()
    return manager.usage()["fast"], held


async def test_sustained_load_leaks_no_tasks_descriptors_or_memory() -> None:
    with Simulator.spawn(latency=0) as sim:
        config = config_for(sim.base_url, client="lean", max_concurrent=200)
        tasks_before = asyncio.all_tasks()
        fds_before = open_fds()
        # Warm up: imports, allocator arenas and first-use caches are not leaks.
        await run_flat(config, 2_000)
        gc.collect()
        rss_before = rss_bytes()

        usage, held = await run_flat(config, 20_000)

        gc.collect()
        rss_growth = rss_bytes() - rss_before
        await wait_until(lambda: asyncio.all_tasks() == tasks_before, "tasks back to baseline")
        await wait_until(lambda: open_fds() <= fds_before + 2, "descriptors back to baseline")
        stats = sim.stats()

    assert usage.requests == usage.successes == 20_000
    assert usage.failures == 0
    assert stats.completed == 22_000
    assert held > fds_before + 100, "the run held many connections open, so a leak would show"
    assert rss_growth < 50 * 2**20, f"RSS grew {rss_growth / 2**20:.1f} MiB"


# -- cancellation ------------------------------------------------------------------


async def check_released(
    sim: Simulator,
    manager: ResourceManager,
    module: LLMInference,
    tasks_before: set[asyncio.Task[Any]],
    fds_before: int,
) -> int:
    """After an abandoned run: no task left, nothing in flight at the server, no
    more requests sent, every concurrency slot back, every socket closed.
    Returns how many requests the abandoned run had sent."""
    await wait_until(lambda: asyncio.all_tasks() == tasks_before, "tasks back to baseline")
    await wait_until(lambda: sim.stats().in_flight == 0, "server in_flight back to 0")
    sent = sim.stats().requests
    await asyncio.sleep(0.2)
    assert sim.stats().requests == sent, "requests kept going after the run was abandoned"
    # A slot lost to the cancellation would leave this run short of capacity.
    follow_up = [f"after {i}" for i in range(200)]
    assert await asyncio.wait_for(module(follow_up), GUARD) == [f"ECHO: {p}" for p in follow_up]
    await manager.aclose()
    await wait_until(lambda: open_fds() <= fds_before, "descriptors back to baseline")
    return sent


@pytest.mark.parametrize("client", ["lean", "openai"])
async def test_breaking_out_of_a_large_stream_releases_everything(client: Client) -> None:
    prompts = [f"stream {i}" for i in range(5_000)]
    async with Simulator(latency=0.05) as sim:
        tasks_before = asyncio.all_tasks()
        fds_before = open_fds()
        manager = ResourceManager(config_for(sim.base_url, client=client, max_concurrent=50))
        module = LLMInference("fast").bind(resources=manager, max_concurrent=50)
        received = []
        async with ExecutionSettings(streaming=True):
            async for result in module(prompts):
                received.append(result)
                if len(received) == 100:
                    break

        assert all(r.ok and r.output == f"ECHO: {r.input}" for r in received)
        assert len({r.index for r in received}) == 100
        sent = await check_released(sim, manager, module, tasks_before, fds_before)
    assert sent < len(prompts) // 10, "the rest of the batch was not cancelled"


@pytest.mark.parametrize("client", ["lean", "openai"])
async def test_cancelling_the_task_awaiting_a_large_batch_releases_everything(
    client: Client,
) -> None:
    prompts = [f"batch {i}" for i in range(5_000)]
    async with Simulator(latency=0.05) as sim:
        tasks_before = asyncio.all_tasks()
        fds_before = open_fds()
        manager = ResourceManager(config_for(sim.base_url, client=client, max_concurrent=50))
        module = LLMInference("fast").bind(resources=manager, max_concurrent=50)
        task = asyncio.ensure_future(module(prompts))
        await wait_until(lambda: sim.stats().completed >= 100, "the batch under way")

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        sent = await check_released(sim, manager, module, tasks_before, fds_before)
    assert sent < len(prompts) // 10, "the rest of the batch was not cancelled"
