"""The ways a user runs a module: await, batch, run_sync, streaming, plait.run,
progress reporting, early exit from a stream, and lazily consumed huge inputs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import plait
from plait import BatchResult, ExecutionSettings, LLMInference, Module
from plait.testing import FakeResources
from support.modules import FanOut
from support.resources import by_prompt, hang

GUARD = 30.0


def echo(fake: FakeResources, **settings: Any) -> LLMInference:
    return LLMInference("fast").bind(resources=fake, **settings)


class Describe(Module):
    """Takes positional and keyword arguments, to exercise batch element shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    def forward(self, topic: str, style: str = "plain") -> Any:
        return self.llm(f"{style}:{topic}")


async def other_tasks_after(iterations: int = 3) -> set[asyncio.Task[Any]]:
    for _ in range(iterations):
        await asyncio.sleep(0)
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


# -- await ---------------------------------------------------------------------------


async def test_await_a_single_input() -> None:
    fake = FakeResources()
    module = FanOut(2).bind(resources=fake)
    assert await asyncio.wait_for(module("x"), GUARD) == "fast(fast(b0:x) | fast(b1:x))"


async def test_await_a_list_keeps_input_order_whatever_finishes_first() -> None:
    prompts = [f"q{index}" for index in range(5)]
    fake = FakeResources(
        latency=by_prompt({prompt: 0.01 * (5 - index) for index, prompt in enumerate(prompts)})
    )
    outputs = await asyncio.wait_for(echo(fake)(prompts), GUARD)
    assert outputs == [f"fast(q{index})" for index in range(5)]
    finish_order = [call.prompt for call in sorted(fake.calls, key=lambda call: call.end_seq or 0)]
    assert finish_order == list(reversed(prompts))


async def test_an_unbound_module_runs_inside_a_settings_block() -> None:
    fake = FakeResources()
    async with ExecutionSettings(resources=fake):
        assert await asyncio.wait_for(LLMInference("fast")("hi"), GUARD) == "fast(hi)"
    assert fake.prompts() == ["hi"]


async def test_a_call_runs_only_once() -> None:
    call = echo(FakeResources())("x")
    assert await asyncio.wait_for(call, GUARD) == "fast(x)"
    with pytest.raises(RuntimeError, match="only once"):
        await call


# -- batch ---------------------------------------------------------------------------


async def test_batch_unpacks_tuples_as_args_and_dicts_as_kwargs() -> None:
    fake = FakeResources()
    module = Describe().bind(resources=fake)
    outputs = await asyncio.wait_for(
        module.batch([("cats", "haiku"), {"topic": "dogs", "style": "limerick"}, "owls"]),
        GUARD,
    )
    assert outputs == ["fast(haiku:cats)", "fast(limerick:dogs)", "fast(plain:owls)"]


async def test_batch_results_show_each_input_as_it_was_given() -> None:
    inputs: list[Any] = [("cats", "haiku"), {"topic": "dogs", "style": "limerick"}, "owls"]
    module = Describe().bind(resources=FakeResources(), streaming=True)
    results = await asyncio.wait_for(module.batch(inputs), GUARD)
    assert [result.input for result in results] == inputs
    assert [result.output for result in results] == [
        "fast(haiku:cats)",
        "fast(limerick:dogs)",
        "fast(plain:owls)",
    ]


async def test_batch_passes_a_wrapped_dict_as_one_argument() -> None:
    fake = FakeResources()
    outputs = await asyncio.wait_for(echo(fake).batch([({"k": 1},)]), GUARD)
    assert outputs == ['fast({"k": 1})']


async def test_batch_consumes_sync_generators_lazily() -> None:
    pulled = 0
    finished = 0
    widest_gap = 0

    def generate() -> Iterator[str]:
        nonlocal pulled, widest_gap
        for index in range(30):
            pulled += 1
            widest_gap = max(widest_gap, pulled - finished)
            yield f"g{index}"

    def on_progress(done: int, total: int | None) -> None:
        nonlocal finished
        finished = done

    fake = FakeResources(latency=0.001)
    call = echo(fake, max_inflight=4, on_progress=on_progress).batch(generate())
    assert pulled == 0  # nothing is read before the call runs
    outputs = await asyncio.wait_for(call, GUARD)
    assert outputs == [f"fast(g{index})" for index in range(30)]
    assert widest_gap <= 4
    assert fake.peak == 4


async def test_batch_accepts_async_iterables() -> None:
    async def generate() -> AsyncIterator[str]:
        for index in range(10):
            yield f"a{index}"

    outputs = await asyncio.wait_for(echo(FakeResources()).batch(generate()), GUARD)
    assert outputs == [f"fast(a{index})" for index in range(10)]


def test_batch_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="batch"):
        echo(FakeResources()).batch("not a list")


# -- run_sync and plait.run ---------------------------------------------------------


def test_run_sync_from_plain_sync_code() -> None:
    fake = FakeResources(latency=0.001)
    module = FanOut(2).bind(resources=fake)
    assert module.run_sync("x") == "fast(fast(b0:x) | fast(b1:x))"
    assert echo(fake).run_sync(["a", "b"]) == ["fast(a)", "fast(b)"]


async def test_run_sync_inside_a_running_event_loop() -> None:
    fake = FakeResources(latency=0.001)
    module = FanOut(2).bind(resources=fake)
    assert module.run_sync("x") == "fast(fast(b0:x) | fast(b1:x))"
    assert fake.call_count == 3


async def test_run_sync_inside_a_loop_sees_the_callers_settings() -> None:
    fake = FakeResources(latency=0.005)
    async with ExecutionSettings(max_concurrent=2):
        outputs = echo(fake).run_sync([f"s{index}" for index in range(6)])
    assert outputs == [f"fast(s{index})" for index in range(6)]
    assert fake.peak == 2


async def test_plait_run_with_explicit_resources_and_settings() -> None:
    fake = FakeResources(latency=0.005)
    module = LLMInference("fast")
    assert await asyncio.wait_for(plait.run(module, "x", resources=fake), GUARD) == "fast(x)"
    outputs = await asyncio.wait_for(
        plait.run(module, ["a", "b", "c"], resources=fake, max_concurrent=1), GUARD
    )
    assert outputs == ["fast(a)", "fast(b)", "fast(c)"]
    assert fake.peak == 1


# -- streaming -----------------------------------------------------------------------


async def drive_gated_stream(order: list[int], **settings: Any) -> list[int]:
    """Release calls one at a time in ``order``; returns the indices in yield order."""
    fake = FakeResources()
    gates = {index: fake.gate(f"q{index}") for index in order}
    seen: list[int] = []
    releases = iter(order)

    async def release_next() -> None:
        index = next(releases, None)
        if index is not None:
            gates[index].set()

    async with ExecutionSettings(streaming=True, **settings):
        stream = echo(fake)([f"q{index}" for index in sorted(order)])
        await release_next()
        async for result in stream:
            assert result.output == f"fast(q{result.index})"
            seen.append(result.index)
            await release_next()
    return seen


async def test_streaming_order_follows_completion() -> None:
    seen = await asyncio.wait_for(drive_gated_stream([2, 0, 3, 1]), GUARD)
    assert seen == [2, 0, 3, 1]


async def test_streaming_with_preserve_order_yields_in_input_order() -> None:
    fake = FakeResources(latency=by_prompt({"q0": 0.04, "q1": 0.02, "q2": 0.0}))
    async with ExecutionSettings(streaming=True, preserve_order=True):
        results = [result async for result in echo(fake)(["q0", "q1", "q2"])]
    assert [result.index for result in results] == [0, 1, 2]
    assert [result.output for result in results] == ["fast(q0)", "fast(q1)", "fast(q2)"]
    finish_order = [call.prompt for call in sorted(fake.calls, key=lambda call: call.end_seq or 0)]
    assert finish_order == ["q2", "q1", "q0"]


async def test_awaiting_a_streaming_batch_returns_batch_results_in_order() -> None:
    fake = FakeResources(latency=by_prompt({"q0": 0.02}))
    async with ExecutionSettings(streaming=True):
        results = await asyncio.wait_for(echo(fake)(["q0", "q1"]), GUARD)
    assert [(result.index, result.output) for result in results] == [
        (0, "fast(q0)"),
        (1, "fast(q1)"),
    ]


@pytest.mark.parametrize("source", ["list", "async generator"])
async def test_break_out_of_a_stream_cancels_everything_in_flight(source: str) -> None:
    fake = FakeResources()
    prompts = [f"q{index}" for index in range(8)]
    for prompt in prompts[1:]:
        fake.script(prompt, hang)

    async def generate() -> AsyncIterator[str]:
        for prompt in prompts:
            yield prompt

    inputs: Any = prompts if source == "list" else generate()
    async with ExecutionSettings(streaming=True):
        async for result in echo(fake).batch(inputs):
            assert result.index == 0
            break

    assert await other_tasks_after() == set()
    outcomes = {call.prompt: call.outcome for call in fake.calls}
    assert outcomes["q0"] == "ok"
    assert all(outcomes[prompt] == "cancelled" for prompt in prompts[1:])
    assert len(outcomes) == 8


async def test_a_finished_stream_leaves_no_task_behind() -> None:
    async with ExecutionSettings(streaming=True):
        results = [result async for result in echo(FakeResources())(["a", "b", "c"])]
    assert len(results) == 3
    assert await other_tasks_after() == set()


def test_loop_shutdown_is_not_blocked_by_a_stream_still_referenced() -> None:
    """asyncio.run cancels leftover tasks at exit; the engine's must end, not linger."""
    fake = FakeResources()
    fake.script("q1", hang)
    kept: list[Any] = []

    async def main() -> int:
        async with ExecutionSettings(streaming=True):
            stream = echo(fake)(["q0", "q1"]).__aiter__()
        kept.append(stream)  # still referenced when the loop shuts down
        first: BatchResult = await stream.__anext__()
        return first.index

    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(asyncio.run(main())), daemon=True)
    thread.start()
    thread.join(10)

    assert not thread.is_alive(), "asyncio.run() hung cancelling the engine's tasks"
    assert outcome == [0]
    assert [call.outcome for call in fake.calls] == ["ok", "cancelled"]


# -- progress ------------------------------------------------------------------------


async def test_on_progress_is_called_once_per_input() -> None:
    calls: list[tuple[int, int | None]] = []
    fake = FakeResources()
    module = FanOut(2).bind(
        resources=fake, on_progress=lambda done, total: calls.append((done, total))
    )
    await asyncio.wait_for(module.batch(["a", "b", "c", "d"]), GUARD)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_on_progress_total_is_unknown_for_async_sources() -> None:
    async def generate() -> AsyncIterator[str]:
        for index in range(3):
            yield f"a{index}"

    calls: list[tuple[int, int | None]] = []
    module = echo(FakeResources(), on_progress=lambda done, total: calls.append((done, total)))
    await asyncio.wait_for(module.batch(generate()), GUARD)
    assert calls == [(1, None), (2, None), (3, None)]


async def test_progress_bar_draws_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = await asyncio.wait_for(
        echo(FakeResources()).batch(["a", "b", "c"], progress=True), GUARD
    )
    assert outputs == ["fast(a)", "fast(b)", "fast(c)"]
    captured = capsys.readouterr()
    assert "3/3" in captured.err
    assert captured.out == ""


# -- huge lazily consumed inputs -----------------------------------------------------


async def test_a_100k_async_stream_never_holds_more_than_max_inflight() -> None:
    total = 100_000
    max_inflight = 256
    pulled = 0
    received = 0
    widest_gap = 0

    async def generate() -> AsyncIterator[str]:
        nonlocal pulled, widest_gap
        for index in range(total):
            pulled += 1
            widest_gap = max(widest_gap, pulled - received)
            yield f"p{index}"

    fake = FakeResources(record=False)
    last: BatchResult | None = None
    async with ExecutionSettings(streaming=True, max_inflight=max_inflight):
        async for result in echo(fake).batch(generate()):
            received += 1
            last = result

    assert received == total
    assert fake.call_count == total
    assert last is not None
    assert last.ok
    # One item may sit pulled in the feeder while it waits for room.
    assert widest_gap <= max_inflight + 1
