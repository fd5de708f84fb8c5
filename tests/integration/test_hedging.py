"""Hedged requests (``hedge=True``): a straggler gets a second copy on an idle slot.

Real modules through the scheduler, the ResourceManager and the lean client to
the simulator on loopback. A straggler is a request the simulator stalls for
30 s the first time it sees its prompt; a hedged copy of it is answered at the
ordinary latency. Bounds on elapsed time are guards far below the stall, not
speed targets.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference, Module
from plait.errors import ConfigError
from plait.resources import ResourceManager
from plait.testing import FakeResources, Simulator

STALL = 30.0


class Echo(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    def forward(self, text: Any) -> Any:
        return self.llm(text)


def stall_first_copy(slow: set[str]) -> Any:
    """A fault callable stalling the first request for each prompt in ``slow``."""
    seen: set[str] = set()

    def fault(seq: int, body: dict[str, Any]) -> str | None:
        prompt = body["messages"][-1]["content"]
        if prompt in slow and prompt not in seen:
            seen.add(prompt)
            return "stall"
        return None

    return fault


def endpoint(base_url: str, **fields: Any) -> dict[str, Any]:
    return {"model": "sim", "base_url": base_url, "api_key": None, **fields}


async def test_a_straggler_is_answered_by_its_copy_and_the_loser_is_cancelled(
    tmp_path: Path,
) -> None:
    """Without hedging the batch would wait the 30 s stall; with it, one extra request."""
    count = 80
    inputs = [f"item {index}" for index in range(count)]
    async with (
        Simulator(latency=0.01, fault=stall_first_copy({"item 60"}), stall_seconds=STALL) as sim,
        ResourceManager({"fast": endpoint(sim.base_url, max_concurrent=4)}) as manager,
    ):
        module = Echo().bind(resources=manager, hedge=True, checkpoint_dir=tmp_path)
        outputs = await asyncio.wait_for(module(inputs), timeout=STALL / 3)
        assert outputs == [f"ECHO: {text}" for text in inputs]
        stats = sim.stats()
        assert stats.requests == count + 1
        assert stats.faults == {"stall": 1}
        assert stats.peak_concurrency <= 4
        await asyncio.sleep(0.05)
        assert sim.stats().in_flight == 0  # the stalled loser was cancelled, not left running

        # The checkpoint holds the winner once: a rerun pays for nothing.
        again = await asyncio.wait_for(module(inputs), timeout=STALL / 3)
        assert again == outputs
        assert sim.stats().requests == count + 1


async def test_copies_stay_within_five_percent_of_calls_and_the_endpoint_limit() -> None:
    """A fifth of the prompts straggle, far more than the cap allows copies for.

    The run's concurrency equals the endpoint's slots, so a slot that frees
    finds no ordinary call queued at the gate and a waiting copy gets it all
    through the batch: the 5% cap, not the lack of idle slots, is what binds.
    """
    count = 200
    inputs = [f"item {index}" for index in range(count)]
    slow = {text for index, text in enumerate(inputs) if index >= 30 and index % 5 == 0}
    async with (
        Simulator(latency=0.01, fault=stall_first_copy(slow), stall_seconds=0.5) as sim,
        ResourceManager({"fast": endpoint(sim.base_url, max_concurrent=8)}) as manager,
    ):
        module = Echo().bind(resources=manager, hedge=True, max_concurrent=8)
        outputs = await asyncio.wait_for(module(inputs), timeout=STALL)
        stats = sim.stats()
    assert outputs == [f"ECHO: {text}" for text in inputs]
    extra = stats.requests - count
    assert 1 <= extra <= 0.05 * count
    assert stats.peak_concurrency <= 8


async def test_no_copy_without_hedge() -> None:
    async with (
        Simulator(latency=0.01, fault=stall_first_copy({"item 40"}), stall_seconds=1.0) as sim,
        ResourceManager({"fast": endpoint(sim.base_url, max_concurrent=4)}) as manager,
    ):
        module = Echo().bind(resources=manager)
        await asyncio.wait_for(module([f"item {index}" for index in range(50)]), timeout=STALL)
        assert sim.stats().requests == 50


async def test_hedge_needs_a_resource_manager() -> None:
    module = Echo().bind(resources=FakeResources(), hedge=True)
    with pytest.raises(ConfigError, match="hedge=True needs resources that are a plait"):
        await module("x")


async def test_a_copy_that_fails_leaves_the_first_copy_to_answer() -> None:
    """The copy fails (503) while the slow first copy still runs: the node waits for
    the first copy's answer instead of failing or retrying, and nothing is logged."""
    seen: dict[str, int] = {}

    def slow_then_503(seq: int, body: dict[str, Any]) -> str | None:
        prompt = body["messages"][-1]["content"]
        if prompt != "item 60":
            return None
        seen[prompt] = seen.get(prompt, 0) + 1
        return "stall" if seen[prompt] == 1 else "503"

    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    inputs = [f"item {index}" for index in range(80)]
    async with (
        Simulator(latency=0.01, fault=slow_then_503, stall_seconds=1.0) as sim,
        ResourceManager({"fast": endpoint(sim.base_url, max_concurrent=4)}) as manager,
    ):
        module = Echo().bind(resources=manager, hedge=True)
        outputs = await asyncio.wait_for(module(inputs), timeout=STALL / 3)
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert outputs == [f"ECHO: {text}" for text in inputs]
    assert seen == {"item 60": 2}
    assert reported == []
