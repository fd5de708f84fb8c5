"""Scheduler: overlap of independent work, the global concurrency cap, priorities,
and event-driven dispatch (no polling)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from plait import LLMInference, Module, trace
from plait.errors import PermanentError
from plait.execution.ready import ReadyQueue
from plait.execution.scheduler import Scheduler
from plait.execution.settings import resolve_settings
from plait.execution.state import ExecutionState, GraphPlan
from plait.testing import FakeResources
from support.modules import Chain, FanOut, Upper

GUARD = 30.0
"""Upper bound on any one run here, so a scheduling bug fails instead of hanging."""


async def run_states(
    states: Iterable[ExecutionState], fake: FakeResources, **settings: Any
) -> list[ExecutionState]:
    """Drive states through a bare Scheduler; returns them in the order they finished."""
    states = list(states)
    finished: list[ExecutionState] = []
    all_done = asyncio.get_running_loop().create_future()

    def on_done(state: ExecutionState) -> None:
        finished.append(state)
        if len(finished) == len(states) and not all_done.done():
            all_done.set_result(None)

    scheduler = Scheduler(resolve_settings(settings), fake, on_done)
    try:
        for state in states:
            scheduler.add(state)
        await asyncio.wait_for(all_done, GUARD)
    finally:
        await scheduler.aclose()
    return finished


class Wide(Module):
    """Three independent calls, whose priorities the tests set on the traced graph."""

    def __init__(self) -> None:
        super().__init__()
        self.low = LLMInference("fast")
        self.mid = LLMInference("fast")
        self.high = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.low(f"low:{text}"), self.mid(f"mid:{text}"), self.high(f"high:{text}")


def prioritised_plan() -> GraphPlan:
    graph = trace(Wide(), "x")
    graph.nodes["low"].priority = -3
    graph.nodes["mid"].priority = 0
    graph.nodes["high"].priority = 7
    return GraphPlan(graph)


# -- overlap -----------------------------------------------------------------------


async def test_independent_branches_overlap_in_time() -> None:
    fake = FakeResources(latency=0.05)
    module = FanOut(3).bind(resources=fake)

    output = await asyncio.wait_for(module("x"), GUARD)

    assert output == "fast(fast(b0:x) | fast(b1:x) | fast(b2:x))"
    branches = [call for call in fake.calls if call.prompt.startswith("b")]
    [join] = [call for call in fake.calls if not call.prompt.startswith("b")]
    first_end = min(call.end_seq for call in branches if call.end_seq is not None)
    assert all(call.start_seq < first_end for call in branches)
    assert fake.peak == 3
    last_end = max(call.end_seq for call in branches if call.end_seq is not None)
    assert join.start_seq > last_end


async def test_inputs_of_a_batch_run_concurrently() -> None:
    fake = FakeResources(latency=0.05)
    module = LLMInference("fast").bind(resources=fake)
    outputs = await asyncio.wait_for(module([f"q{index}" for index in range(10)]), GUARD)
    assert outputs == [f"fast(q{index})" for index in range(10)]
    assert fake.peak == 10


# -- the concurrency cap -----------------------------------------------------------


@pytest.mark.parametrize(("cap", "size"), [(1, 40), (7, 300), (40, 300)])
async def test_max_concurrent_holds_across_a_large_fan_out_batch(cap: int, size: int) -> None:
    fake = FakeResources(latency=0.001, record=False)
    module = FanOut(3).bind(resources=fake, max_concurrent=cap)
    inputs = [f"i{index}" for index in range(size)]

    outputs = await asyncio.wait_for(module.batch(inputs), GUARD)

    assert fake.call_count == size * 4
    assert fake.peak <= cap
    assert fake.peak == cap  # the cap is reached, not just respected
    assert len(outputs) == size
    assert outputs[17] == "fast(fast(b0:i17) | fast(b1:i17) | fast(b2:i17))"


async def test_max_concurrent_counts_calls_of_every_input_together() -> None:
    fake = FakeResources(latency=0.002)
    states = [
        ExecutionState(GraphPlan(trace(FanOut(5), "x")), (f"in{index}",), index=index)
        for index in range(20)
    ]
    finished = await run_states(states, fake, max_concurrent=4)
    assert len(finished) == 20
    assert fake.peak == 4
    assert all(state.error() is None for state in finished)


# -- priorities --------------------------------------------------------------------


async def test_higher_priority_nodes_start_first_across_inputs() -> None:
    fake = FakeResources()
    plan = prioritised_plan()
    states = [ExecutionState(plan, (name,), index=index) for index, name in enumerate("AB")]

    await run_states(states, fake, max_concurrent=1)

    assert fake.prompts() == ["high:A", "high:B", "mid:A", "mid:B", "low:A", "low:B"]


async def test_equal_priority_prefers_older_inputs() -> None:
    fake = FakeResources()
    plan = GraphPlan(trace(Chain(), "x"))
    states = [ExecutionState(plan, (name,), index=index) for index, name in enumerate("ABC")]

    finished = await run_states(states, fake, max_concurrent=1)

    # Each input's second call outranks the next input's first: older inputs finish first.
    assert fake.prompts() == [
        "A",
        "then:fast(A)",
        "B",
        "then:fast(B)",
        "C",
        "then:fast(C)",
    ]
    assert [state.index for state in finished] == [0, 1, 2]


async def test_batch_with_cap_one_drains_inputs_in_order() -> None:
    fake = FakeResources()
    module = Chain().bind(resources=fake, max_concurrent=1)
    await asyncio.wait_for(module.batch(["A", "B"]), GUARD)
    assert fake.prompts() == ["A", "then:fast(A)", "B", "then:fast(B)"]


async def test_the_last_inputs_run_every_branch_before_any_join() -> None:
    fake = FakeResources()
    module = FanOut(3).bind(resources=fake, max_concurrent=2)
    await asyncio.wait_for(module.batch(["A", "B", "C", "D", "E"]), GUARD)
    order = fake.prompts()

    def first(text: str) -> int:
        return next(at for at, prompt in enumerate(order) if text in prompt)

    def join(letter: str) -> int:
        return order.index(" | ".join(f"fast(b{branch}:{letter})" for branch in range(3)))

    # Depth first while more than two inputs are unfinished: the first
    # result does not wait for later inputs' branches.
    assert join("A") < first("b0:D")
    # Once only two are left, their branches all go before either join, so
    # the last joins share a wave instead of trailing one by one.
    last_branches = [order.index(f"b{branch}:{letter}") for letter in "DE" for branch in range(3)]
    assert max(last_branches) < min(join("D"), join("E"))


# -- non-LLM nodes and callbacks -----------------------------------------------------


class ShoutThenAsk(Module):
    def __init__(self) -> None:
        super().__init__()
        self.shout = Upper()
        self.ask = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.ask(f"Q: {self.shout(text)}")


async def test_custom_module_nodes_run_on_real_values() -> None:
    fake = FakeResources()
    module = ShoutThenAsk().bind(resources=fake)
    assert await asyncio.wait_for(module("hello"), GUARD) == "fast(Q: HELLO)"


class Explode(Module):
    def forward(self, text: str) -> str:
        raise ValueError(f"cannot handle {text}")


class ExplodeThenAsk(Module):
    def __init__(self) -> None:
        super().__init__()
        self.explode = Explode()
        self.ask = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.ask(self.explode(text))


async def test_callbacks_report_each_node() -> None:
    fake = FakeResources()
    fake.script("b1:x", PermanentError("no"))
    completed: list[str] = []
    failed: list[tuple[str, str]] = []
    module = FanOut(3).bind(
        resources=fake,
        on_task_complete=lambda index, node, value: completed.append(node),
        on_task_failed=lambda index, node, error: failed.append((node, str(error))),
    )
    with pytest.raises(PermanentError):
        await asyncio.wait_for(module("x"), GUARD)
    assert sorted(completed) == ["branch0", "branch2"]
    assert failed == [("branch1", "no")]


async def test_a_raising_custom_module_fails_its_node_without_calling_the_llm() -> None:
    fake = FakeResources()
    module = ExplodeThenAsk().bind(resources=fake)
    with pytest.raises(ValueError, match="cannot handle boom"):
        await asyncio.wait_for(module("boom"), GUARD)
    assert fake.call_count == 0


# -- event driven ----------------------------------------------------------------


def counting(counter: dict[str, int], name: str, original: Callable[..., Any]) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counter[name] += 1
        return original(*args, **kwargs)

    return wrapper


def counting_plait_timers(counter: dict[str, int], original: Callable[..., Any]) -> Any:
    """Count timers scheduled from plait's own code (not pytest's or asyncio's)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("plait"):
            counter["timers"] += 1
        return original(*args, **kwargs)

    return wrapper


async def test_dispatch_is_event_driven_without_sleeps_or_timers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = {"sleep": 0, "timers": 0}
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(asyncio, "sleep", counting(counter, "sleep", asyncio.sleep))
    monkeypatch.setattr(loop, "call_later", counting_plait_timers(counter, loop.call_later))
    monkeypatch.setattr(loop, "call_at", counting_plait_timers(counter, loop.call_at))
    fake = FakeResources(record=False)
    module = FanOut(3).bind(resources=fake, max_concurrent=64)

    outputs = await asyncio.wait_for(module.batch([f"i{index}" for index in range(250)]), GUARD)

    assert fake.call_count == 1000
    assert len(outputs) == 250
    assert outputs[-1] == "fast(fast(b0:i249) | fast(b1:i249) | fast(b2:i249))"
    assert counter == {"sleep": 0, "timers": 0}


async def test_the_timer_counter_sees_plait_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the test above: a retry is a plait timer, and the counter must see it."""
    from plait.errors import TransientError

    counter = {"timers": 0}
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "call_later", counting_plait_timers(counter, loop.call_later))
    fake = FakeResources()
    fake.script("x", TransientError("flaky"))
    module = LLMInference("fast").bind(resources=fake, task_retry_delay=0.001)
    assert await asyncio.wait_for(module("x"), GUARD) == "fast(x)"
    assert counter["timers"] == 1


async def test_a_wide_fan_out_queues_each_node_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queue work grows with the nodes, not their square: 300 ready branches of one
    input are each queued once, and no entry is queued again when another starts."""
    pushes = {"count": 0}
    original = ReadyQueue.push

    def counted(self: ReadyQueue, *args: Any) -> None:
        pushes["count"] += 1
        original(self, *args)

    monkeypatch.setattr(ReadyQueue, "push", counted)
    fake = FakeResources(record=False)
    module = FanOut(300).bind(resources=fake, max_concurrent=8)

    output = await asyncio.wait_for(module.batch(["x", "y"]), GUARD)

    assert fake.call_count == 2 * 301
    assert output[1].startswith("fast(fast(b0:y) | fast(b1:y)")
    assert pushes["count"] == 2 * 301


class ShortAndLong(Module):
    """One call written first, then a chain of three: the chain bounds the input."""

    def __init__(self) -> None:
        super().__init__()
        self.short = LLMInference("fast")
        self.first = LLMInference("fast")
        self.second = LLMInference("fast")
        self.third = LLMInference("fast")

    def forward(self, text: str) -> Any:
        quick = self.short(f"short:{text}")
        one = self.first(f"1:{text}")
        two = self.second(f"2:{one}")
        chain = self.third(f"3:{two}")
        return quick, chain


async def test_the_branch_with_more_calls_ahead_starts_first() -> None:
    fake = FakeResources()
    states = [ExecutionState(GraphPlan(trace(ShortAndLong(), "x")), ("A",), index=0)]

    await run_states(states, fake, max_concurrent=1)

    assert fake.prompts()[0] == "1:A"
    assert fake.prompts()[-1].startswith("3:")
    assert "short:A" in fake.prompts()[1:3]
