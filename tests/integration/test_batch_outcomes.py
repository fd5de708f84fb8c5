"""What a batch hands back, over real HTTP to the simulator on loopback.

A failed input must not cost the paid results of the others
(``BatchError`` carries them all; ``return_exceptions=True`` returns them in
place), ``task_timeout`` bounds a request on the wire and not its wait for a
slot, any iterator passed to a call is a batch, the task hooks say which
input a node belongs to, and a ``Call`` runs once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from plait import ExecutionSettings, LLMInference, Module, run
from plait.errors import (
    BatchError,
    CallReusedError,
    ConfigError,
    ResponseValidationError,
    TaskTimeoutError,
    TransientError,
)
from plait.resources import ResourceManager
from plait.testing import Simulator

MODEL = "sim-model"


class Ticket(BaseModel):
    title: str


def refuse(prompt: str) -> Any:
    """A reply function: a ticket for every prompt, and a non-ticket for ``prompt``."""

    def reply(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        return {"wrong": text} if text == prompt else {"title": text}

    return reply


class Two(Module):
    """Two calls per input, so each input has two nodes the hooks report."""

    def __init__(self) -> None:
        super().__init__()
        self.first = LLMInference("fast")
        self.second = LLMInference("fast")

    def forward(self, text: Any) -> Any:
        return self.second(self.first(text))


def resources(base_url: str, **fields: Any) -> ResourceManager:
    return ResourceManager(
        {"fast": {"model": MODEL, "base_url": base_url, "api_key": None, **fields}}
    )


def prompts(count: int) -> list[str]:
    return [f"item {i}" for i in range(count)]


# -- BatchError keeps what was paid for; return_exceptions ----------------------


async def test_a_batch_error_carries_every_result_by_input_index() -> None:
    async with Simulator(reply=refuse("item 3")) as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast", response_format=Ticket).bind(resources=manager)
        with pytest.raises(BatchError) as raised:
            await llm(prompts(8))
        await manager.aclose()
        served = sim.stats().requests
    error = raised.value
    assert served == 8  # every result below was paid for once, none re-sent
    assert error.failed_indices == [3]
    assert isinstance(error.failures[3], ResponseValidationError)
    assert sorted(error.outputs) == [0, 1, 2, 4, 5, 6, 7]
    assert error.outputs[5] == Ticket(title="item 5")
    assert len(error.results) == 8
    assert error.results[3] is error.failures[3]
    assert [r.title for i, r in enumerate(error.results) if i != 3] == [
        f"item {i}" for i in range(8) if i != 3
    ]


async def test_return_exceptions_returns_the_results_in_place() -> None:
    async with Simulator(reply=refuse("item 2")) as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast", response_format=Ticket)
        bound = LLMInference("fast", response_format=Ticket).bind(
            resources=manager, return_exceptions=True
        )
        through_bind = await bound(prompts(4))
        with ExecutionSettings(resources=manager, return_exceptions=True):
            through_block = await llm(prompts(4))
        through_run = await run(llm, prompts(4), resources=manager, return_exceptions=True)
        through_batch = await llm.bind(resources=manager).batch(prompts(4), return_exceptions=True)
        await manager.aclose()
    for results in (through_bind, through_block, through_run, through_batch):
        assert len(results) == 4
        assert isinstance(results[2], ResponseValidationError)
        assert [results[i] for i in (0, 1, 3)] == [Ticket(title=f"item {i}") for i in (0, 1, 3)]


async def test_return_exceptions_leaves_a_single_call_raising() -> None:
    async with Simulator(reply=refuse("only")) as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast", response_format=Ticket)
        with pytest.raises(ResponseValidationError):
            await run(llm, "only", resources=manager, return_exceptions=True)
        await manager.aclose()


def test_return_exceptions_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="return_exceptions must be True or False"):
        ExecutionSettings(return_exceptions="yes")


# -- task_timeout bounds the request in flight, not the queue -------------------


async def test_task_timeout_does_not_count_the_wait_for_a_slot() -> None:
    # 100 inputs through 5 slots at 50 ms each take ~1 s; a 0.3 s timeout that
    # counted queueing would cut every input past the first ~30.
    count = 100
    async with Simulator(latency=0.05) as sim:
        manager = resources(sim.base_url, max_concurrent=5)
        llm = LLMInference("fast").bind(resources=manager, task_timeout=0.3, max_task_retries=0)
        outputs = await llm(prompts(count))
        await manager.aclose()
        stats = sim.stats()
    assert outputs == [f"ECHO: item {i}" for i in range(count)]
    assert stats.requests == count  # no request was cut and sent again
    assert stats.peak_concurrency <= 5


async def test_task_timeout_does_not_count_the_wait_for_a_rate_limit() -> None:
    # 600 requests/min, paced evenly: the tenth request waits ~0.9 s for its
    # permit, far past the timeout, though each request takes 10 ms.
    async with Simulator(latency=0.01) as sim:
        manager = resources(sim.base_url, rate_limit=600, max_concurrent=10)
        llm = LLMInference("fast").bind(resources=manager, task_timeout=0.3, max_task_retries=0)
        outputs = await llm(prompts(10))
        await manager.aclose()
        assert sim.stats().requests == 10
    assert outputs == [f"ECHO: item {i}" for i in range(10)]


async def test_task_timeout_still_cuts_a_request_that_stalls_on_the_wire() -> None:
    def stall(seq: int, body: dict[str, Any]) -> str | None:
        return "stall" if body["messages"][-1]["content"] == "item 4" else None

    async with Simulator(latency=0.01, stall_seconds=30.0, fault=stall) as sim:
        manager = resources(sim.base_url, max_concurrent=2)
        llm = LLMInference("fast").bind(resources=manager, task_timeout=0.3, max_task_retries=0)
        started = time.monotonic()
        with pytest.raises(BatchError) as raised:
            await llm(prompts(8))
        elapsed = time.monotonic() - started
        await manager.aclose()
    assert elapsed < 5.0
    assert raised.value.failed_indices == [4]
    failure = raised.value.failures[4]
    assert isinstance(failure, TaskTimeoutError)
    assert "task_timeout=0.3" in str(failure)
    assert manager.usage()["fast"].failures == 1


# -- any iterator passed to a call is a batch ----------------------------------


async def test_a_generator_passed_to_a_call_is_a_batch() -> None:
    async with Simulator() as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        outputs = await llm(f"item {i}" for i in range(3))
        from_run = await run(LLMInference("fast"), iter(["a", "b"]), resources=manager)
        await manager.aclose()
        served = sim.stats().requests
    assert outputs == ["ECHO: item 0", "ECHO: item 1", "ECHO: item 2"]
    assert from_run == ["ECHO: a", "ECHO: b"]
    assert served == 5


async def test_an_async_generator_streams_as_in_the_readme() -> None:
    async def requests() -> AsyncIterator[str]:
        for i in range(4):
            await asyncio.sleep(0)
            yield f"item {i}"

    async with Simulator() as sim:
        manager = resources(sim.base_url)
        pipeline = Two().bind(resources=manager)
        seen: dict[int, Any] = {}
        async with ExecutionSettings(streaming=True, max_inflight=2):
            async for result in pipeline(requests()):
                assert result.ok
                seen[result.index] = result.output
        awaited = await pipeline(requests())
        await manager.aclose()
        bodies = sim.stats().requests
    assert seen == {i: f"ECHO: ECHO: item {i}" for i in range(4)}
    assert awaited == [f"ECHO: ECHO: item {i}" for i in range(4)]
    assert bodies == 16


def test_run_sync_takes_a_generator_too() -> None:
    with Simulator() as sim:
        manager = resources(sim.base_url)

        def inputs() -> Iterator[str]:
            yield "x"
            yield "y"

        assert LLMInference("fast").bind(resources=manager).run_sync(inputs()) == [
            "ECHO: x",
            "ECHO: y",
        ]


# -- the task hooks name the input ----------------------------------------------


async def test_task_hooks_give_the_input_index() -> None:
    completed: list[tuple[int, str, Any]] = []
    failed: list[tuple[int, str, type[BaseException]]] = []

    def fault(seq: int, body: dict[str, Any]) -> str | None:
        return "503" if body["messages"][-1]["content"] == "ECHO: item 1" else None

    async with Simulator(fault=fault) as sim:
        manager = resources(sim.base_url)
        pipeline = Two().bind(
            resources=manager,
            return_exceptions=True,
            max_task_retries=0,
            on_task_complete=lambda index, node, value: completed.append((index, node, value)),
            on_task_failed=lambda index, node, error: failed.append((index, node, type(error))),
        )
        await pipeline(prompts(3))
        await manager.aclose()
    by_input: dict[int, list[Any]] = {}
    for index, _, value in completed:
        by_input.setdefault(index, []).append(value)
    assert by_input == {
        0: ["ECHO: item 0", "ECHO: ECHO: item 0"],
        1: ["ECHO: item 1"],
        2: ["ECHO: item 2", "ECHO: ECHO: item 2"],
    }
    assert [index for index, _, _ in failed] == [1]
    assert issubclass(failed[0][2], TransientError)


def test_a_task_hook_that_cannot_take_the_index_is_refused_up_front() -> None:
    with pytest.raises(ConfigError, match=r"on_task_complete\(index, node_id, value\)"):
        ExecutionSettings(on_task_complete=lambda node, value: None)
    with pytest.raises(ConfigError, match=r"on_task_failed\(index, node_id, error\)"):
        LLMInference("fast").bind(on_task_failed=lambda node, error: None)


# -- a Call runs once --------------------------------------------------------------


async def test_awaiting_a_call_twice_is_a_clear_error_and_sends_nothing_more() -> None:
    async with Simulator() as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        call = llm("once")
        assert await call == "ECHO: once"
        with pytest.raises(CallReusedError, match="call the module again"):
            await call
        with pytest.raises(CallReusedError):
            async for _ in call:
                pass
        # Driven by a task and awaited directly at the same time.
        racing = llm("twice")
        task = asyncio.ensure_future(racing)
        await asyncio.sleep(0)  # the task has started the call
        with pytest.raises(CallReusedError):
            await racing
        assert await task == "ECHO: twice"
        await manager.aclose()
        assert sim.stats().requests == 2


async def test_a_call_awaited_first_then_wrapped_in_a_task_fails_clearly() -> None:
    async with Simulator() as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        call = llm("first")
        assert await call == "ECHO: first"
        with pytest.raises(CallReusedError):
            await asyncio.ensure_future(call)
        await manager.aclose()
