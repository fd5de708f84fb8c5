"""Dynamic modules on the engine with in-process fakes: ordering, tape, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import plait.functional as F
from plait import LLMInference, Module
from plait.errors import TaskTimeoutError
from plait.execution.gate import Gate
from plait.execution.tape import build_tape
from plait.graph import NodeKind, NodeRef, Template
from plait.testing import FakeResources

GUARD = 10.0


async def test_a_gate_hands_a_freed_slot_to_the_earliest_input() -> None:
    gate = Gate(1)
    await gate.acquire((0, 0, 0))
    order: list[int] = []

    async def take(index: int) -> None:
        await gate.acquire((0, index, 0))
        order.append(index)
        gate.release()

    tasks = [asyncio.create_task(take(index)) for index in (5, 3, 9, 1)]
    await asyncio.sleep(0)
    gate.release()
    await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    assert order == [1, 3, 5, 9]
    assert gate.free == 1


async def test_swapping_the_gate_order_ranks_waiters_by_node_before_input() -> None:
    gate = Gate(1)
    await gate.acquire((0, 0, 0))
    order: list[tuple[int, int]] = []

    async def take(index: int, rank: int) -> None:
        await gate.acquire((0, index, rank))
        order.append((index, rank))
        gate.release()

    tasks = [asyncio.create_task(take(index, rank)) for index, rank in ((1, 3), (2, 0), (1, 0))]
    await asyncio.sleep(0)
    gate.swap_order()
    gate.release()
    await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    assert order == [(1, 0), (2, 0), (1, 3)]


async def test_a_cancelled_waiter_does_not_keep_its_slot() -> None:
    gate = Gate(1)
    await gate.acquire((0, 0, 0))
    waiter = asyncio.create_task(gate.acquire((0, 1, 0)))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    gate.release()
    assert gate.free == 1


class Step(Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = LLMInference("fast")
        self.b = LLMInference("fast")


def test_the_tape_links_calls_by_value_and_by_text() -> None:
    step = Step()
    entries = [
        _entry(0, step.a, ("Plan: tea",), "a plan for tea"),
        _entry(1, step.b, ("Write from: a plan for tea",), "a draft"),
        _entry(2, step.a, ("a draft",), "ok"),
    ]
    entries[2] = _entry(2, step.a, (entries[1].output,), "fine")
    record = build_tape(step, ("tea",), {}, entries, "fine", None)
    nodes = record.graph.nodes
    assert [nid for nid in nodes if nodes[nid].kind is not NodeKind.INPUT] == ["a#0", "b#1", "a#2"]
    assert nodes["b#1"].args == (Template(("Write from: ", NodeRef("a#0"))),)
    assert nodes["a#2"].args == (NodeRef("b#1"),)
    assert nodes["a#0"].dependencies == ["input:0"]  # the forward's own input
    assert record.graph.output_ids == ["a#2"]


def _entry(seq: int, module: Any, args: tuple[Any, ...], output: Any) -> Any:
    from plait.execution.dynamic import TapeEntry

    return TapeEntry(seq, module, args, {}, output, None)


class Slow(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    async def forward(self, text: str) -> str:
        reply = await self.llm(text)
        if text == "stall":
            await asyncio.sleep(1.0)
        return reply


async def test_task_timeout_counts_only_a_forwards_own_time() -> None:
    fake = FakeResources(latency=0.01)
    module = Slow().bind(resources=fake, task_timeout=0.03, max_task_retries=0)
    with pytest.raises(TaskTimeoutError, match="outside its calls"):
        await asyncio.wait_for(module("stall"), GUARD)
    # two calls of 0.08 s in a row exceed 0.1 s together; each call has its own clock
    twice = Twice().bind(resources=FakeResources(latency=0.08), task_timeout=0.1)
    assert await asyncio.wait_for(twice("x"), GUARD) == "fast(fast(x))"


class Twice(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    async def forward(self, text: str) -> str:
        return await self.llm(await self.llm(text))


class Impatient(Module):
    def __init__(self) -> None:
        super().__init__()
        self.slow = LLMInference("slow")
        self.fast = LLMInference("fast")

    async def forward(self, text: str) -> str:
        try:
            return await asyncio.wait_for(self.slow(text), 0.05)
        except TimeoutError:
            return await self.fast(text)


async def test_a_call_the_forward_stops_waiting_for_is_abandoned() -> None:
    fake = FakeResources(latency=lambda request: 0.5 if request.model == "slow" else 0.0)
    module = Impatient().bind(resources=fake)
    assert await asyncio.wait_for(module("x"), GUARD) == "fast(x)"


async def test_f_map_outside_the_engine_gathers_plain_and_bound_calls() -> None:
    class Upper(Module):
        def forward(self, text: str) -> str:
            return text.upper()

    assert await F.map(Upper(), ["a", "b"]) == ["A", "B"]
    bound = LLMInference("fast").bind(resources=FakeResources())
    assert await F.map(bound, ["a", "b"]) == ["fast(a)", "fast(b)"]
