"""Failure handling: retries with backoff, permanent errors, timeouts, 429 requeues,
cancellation of descendants, batch and streaming error reporting, unknown aliases."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest

from plait import ExecutionSettings, LLMInference, Module
from plait.errors import (
    BatchError,
    ExecutionError,
    PermanentError,
    RateLimitError,
    TaskTimeoutError,
    TransientError,
    UnknownAliasError,
)
from plait.execution.retry import MAX_RATE_LIMIT_REQUEUES
from plait.testing import FakeResources
from support.modules import TwoBranches
from support.resources import by_prompt, hang

GUARD = 30.0
HANG_GUARD = 5.0
"""For runs whose known failure mode is hanging: fail fast instead."""
FAST_RETRY = {"task_retry_delay": 0.001}


def echo(fake: FakeResources, **settings: Any) -> LLMInference:
    return LLMInference("fast").bind(resources=fake, **{**FAST_RETRY, **settings})


def record_plait_timers(loop: asyncio.AbstractEventLoop, delays: list[float]) -> Callable[..., Any]:
    """A ``call_later`` that notes the delay of every timer plait's own code sets."""
    original = loop.call_later

    def call_later(delay: float, *args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_globals.get("__name__", "").startswith("plait"):
            delays.append(delay)
        return original(delay, *args, **kwargs)

    return call_later


# -- transient errors --------------------------------------------------------------


async def test_transient_errors_retry_until_success() -> None:
    fake = FakeResources()
    fake.script("x", TransientError("503"), TransientError("reset"))
    assert await asyncio.wait_for(echo(fake, max_task_retries=3)("x"), GUARD) == "fast(x)"
    assert [call.attempt for call in fake.calls] == [0, 1, 2]
    assert [call.outcome for call in fake.calls] == ["TransientError", "TransientError", "ok"]


async def test_transient_errors_fail_after_max_task_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delays: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "call_later", record_plait_timers(loop, delays))
    fake = FakeResources()
    last = TransientError("still down")
    fake.script("x", TransientError("1"), TransientError("2"), TransientError("3"), last)
    base = 0.004

    with pytest.raises(TransientError) as raised:
        await asyncio.wait_for(echo(fake, max_task_retries=3, task_retry_delay=base)("x"), GUARD)

    assert raised.value is last
    assert [call.attempt for call in fake.calls] == [0, 1, 2, 3]
    # Exponential backoff with jitter: retry k waits between half and all of base * 2**k.
    assert len(delays) == 3
    for k, delay in enumerate(delays):
        assert base * 2**k / 2 <= delay <= base * 2**k


async def test_zero_retries_means_one_attempt() -> None:
    fake = FakeResources()
    fake.script("x", TransientError("503"))
    with pytest.raises(TransientError):
        await asyncio.wait_for(echo(fake, max_task_retries=0)("x"), GUARD)
    assert fake.call_count == 1


async def test_the_endpoints_retry_limit_overrides_max_task_retries() -> None:
    fake = FakeResources(retry_limits={"fast": 1})
    fake.script("x", TransientError("1"), TransientError("2"))
    with pytest.raises(TransientError, match="2"):
        await asyncio.wait_for(echo(fake, max_task_retries=5)("x"), GUARD)
    assert fake.call_count == 2


async def test_connection_errors_from_a_client_are_transient() -> None:
    fake = FakeResources()
    fake.script("x", ConnectionResetError("peer reset"))
    assert await asyncio.wait_for(echo(fake)("x"), GUARD) == "fast(x)"
    assert fake.call_count == 2


# -- permanent errors --------------------------------------------------------------


async def test_permanent_errors_fail_at_once() -> None:
    fake = FakeResources()
    error = PermanentError("400 bad request", status_code=400)
    fake.script("x", error)
    with pytest.raises(PermanentError) as raised:
        await asyncio.wait_for(echo(fake, max_task_retries=5)("x"), GUARD)
    assert raised.value is error
    assert fake.call_count == 1


# -- timeouts ----------------------------------------------------------------------


async def test_task_timeout_bounds_a_hung_call() -> None:
    fake = FakeResources()
    fake.script("x", hang)
    with pytest.raises(TaskTimeoutError, match=r"task_timeout=0\.05"):
        await asyncio.wait_for(echo(fake, task_timeout=0.05, max_task_retries=0)("x"), GUARD)
    assert [call.outcome for call in fake.calls] == ["cancelled"]


async def test_a_timed_out_call_is_retried_like_a_transient_error() -> None:
    fake = FakeResources()
    fake.script("x", hang)
    module = echo(fake, task_timeout=0.05, max_task_retries=1)
    assert await asyncio.wait_for(module("x"), GUARD) == "fast(x)"
    assert [call.outcome for call in fake.calls] == ["cancelled", "ok"]


async def test_timeouts_exhaust_retries_too() -> None:
    fake = FakeResources()
    fake.script("x", hang, hang, hang)
    with pytest.raises(TaskTimeoutError):
        await asyncio.wait_for(echo(fake, task_timeout=0.03, max_task_retries=2)("x"), GUARD)
    assert fake.call_count == 3


class Stall(Module):
    async def forward(self, text: str) -> str:
        await asyncio.get_running_loop().create_future()
        return text


class StallThenAsk(Module):
    def __init__(self) -> None:
        super().__init__()
        self.stall = Stall()
        self.ask = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.ask(self.stall(text))


async def test_task_timeout_bounds_async_custom_modules() -> None:
    fake = FakeResources()
    module = StallThenAsk().bind(resources=fake, task_timeout=0.03, max_task_retries=0)
    with pytest.raises(TaskTimeoutError, match="stall"):
        await asyncio.wait_for(module("x"), GUARD)
    assert fake.call_count == 0


# -- rate limits -------------------------------------------------------------------


async def test_rate_limits_requeue_without_spending_the_retry_limit() -> None:
    fake = FakeResources()
    fake.script(
        "x",
        RateLimitError("429", retry_after=0.001),
        RateLimitError("429", retry_after=0.001),
        RateLimitError("429", retry_after=0.001),
        TransientError("503"),
        TransientError("503"),
    )
    assert await asyncio.wait_for(echo(fake, max_task_retries=2)("x"), GUARD) == "fast(x)"
    # Requeues after 429 keep the attempt number; only transient failures advance it.
    assert [call.attempt for call in fake.calls] == [0, 0, 0, 0, 1, 2]


async def test_rate_limit_requeue_waits_for_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "call_later", record_plait_timers(loop, delays))
    fake = FakeResources()
    fake.script("L:x", RateLimitError("429", retry_after=0.2))
    module = TwoBranches().bind(resources=fake)

    output = await asyncio.wait_for(module("x"), GUARD)

    assert output == ("fast(then:fast(L:x))", "fast(then:fast(R:x))")
    assert delays == [0.2]
    first, second = fake.calls_for("L:x")
    assert first.end is not None
    # The other branch finishing (and making its next call ready) must not cut
    # the wait short.
    assert second.start - first.end >= 0.19
    assert fake.calls_for("then:fast(R:x)")[0].start < second.start


async def test_transient_backoff_is_not_cut_short_by_other_ready_nodes() -> None:
    fake = FakeResources()
    fake.script("L:x", TransientError("503"))
    module = TwoBranches().bind(resources=fake, task_retry_delay=0.4)

    await asyncio.wait_for(module("x"), GUARD)

    first, second = fake.calls_for("L:x")
    assert first.end is not None
    assert second.start - first.end >= 0.19  # at least half the base delay (jitter)


async def test_endless_rate_limits_eventually_fail() -> None:
    fake = FakeResources()
    fake.script("x", *[RateLimitError("429", retry_after=0) for _ in range(1000)])
    with pytest.raises(RateLimitError):
        await asyncio.wait_for(echo(fake, max_task_retries=0)("x"), GUARD)
    assert fake.call_count == MAX_RATE_LIMIT_REQUEUES + 1


# -- cancellation of descendants ---------------------------------------------------


async def test_a_failed_node_cancels_only_its_descendants() -> None:
    fake = FakeResources()
    cause = PermanentError("left is broken")
    fake.script("L:x", cause)
    completed: list[str] = []
    module = TwoBranches().bind(
        resources=fake, on_task_complete=lambda index, node, value: completed.append(node)
    )

    with pytest.raises(PermanentError) as raised:
        await asyncio.wait_for(module("x"), GUARD)

    assert raised.value is cause  # the root cause, not a cancellation
    assert sorted(completed) == ["right.first", "right.second"]
    assert fake.prompts().count("then:fast(R:x)") == 1
    assert not any(prompt.startswith("then:") and "L:" in prompt for prompt in fake.prompts())


async def test_a_single_call_raises_the_nodes_own_error() -> None:
    class Broken(Module):
        def forward(self, text: str) -> str:
            raise KeyError(text)

    class UsesBroken(Module):
        def __init__(self) -> None:
            super().__init__()
            self.broken = Broken()
            self.ask = LLMInference("fast")

        def forward(self, text: str) -> Any:
            return self.ask(self.broken(text))

    fake = FakeResources()
    with pytest.raises(KeyError, match="missing-key"):
        await asyncio.wait_for(UsesBroken().bind(resources=fake)("missing-key"), GUARD)
    assert fake.call_count == 0


async def test_a_cancelled_error_raised_by_node_code_fails_only_that_node() -> None:
    class Quits(Module):
        async def forward(self, text: str) -> str:
            raise asyncio.CancelledError

    class QuitsBesideAsk(Module):
        def __init__(self) -> None:
            super().__init__()
            self.quits = Quits()
            self.ask = LLMInference("fast")

        def forward(self, text: str) -> Any:
            return {"quit": self.quits(text), "ask": self.ask(text)}

    fake = FakeResources()
    module = QuitsBesideAsk().bind(resources=fake)
    with pytest.raises(ExecutionError, match="'quits' was cancelled"):
        await asyncio.wait_for(module("x"), GUARD)
    assert [call.outcome for call in fake.calls] == ["ok"]  # the sibling still ran


# -- batches -----------------------------------------------------------------------


async def test_a_batch_raises_one_error_naming_every_failed_input() -> None:
    fake = FakeResources(latency=0.001)
    bad_request = PermanentError("400 bad request")
    down = TransientError("503 down")
    fake.script("q1", bad_request)
    fake.script("q4", down)
    module = echo(fake, max_task_retries=0)

    with pytest.raises(BatchError) as raised:
        await asyncio.wait_for(module([f"q{index}" for index in range(6)]), GUARD)

    error = raised.value
    assert error.failures == {1: bad_request, 4: down}
    assert list(error.failed_indices) == [1, 4]
    assert error.total == 6
    assert "2 of 6 inputs failed" in str(error)
    assert "input 1: PermanentError: 400 bad request" in str(error)
    assert "input 4: TransientError: 503 down" in str(error)
    assert sorted(fake.prompts()) == [f"q{index}" for index in range(6)]  # the rest still ran


async def test_streaming_reports_failures_per_result_and_keeps_going() -> None:
    fake = FakeResources(latency=by_prompt({"q1": 0.0}, 0.005))
    bad_request = PermanentError("400 bad request")
    fake.script("q1", bad_request)
    async with ExecutionSettings(streaming=True):
        results = [result async for result in echo(fake)([f"q{index}" for index in range(5)])]

    assert results[0].index == 1  # the failure arrives first and the stream carries on
    by_index = {result.index: result for result in results}
    assert sorted(by_index) == [0, 1, 2, 3, 4]
    assert by_index[1].error is bad_request
    assert not by_index[1].ok
    assert by_index[1].output is None
    for index in (0, 2, 3, 4):
        assert by_index[index].ok
        assert by_index[index].output == f"fast(q{index})"


# -- unknown aliases ---------------------------------------------------------------


class TwoAliases(Module):
    def __init__(self) -> None:
        super().__init__()
        self.known = LLMInference("fast")
        self.unknown = LLMInference("nowhere")

    def forward(self, text: str) -> Any:
        return self.known(text), self.unknown(text)


async def test_an_unknown_alias_fails_before_any_request() -> None:
    fake = FakeResources(aliases=("fast",))
    with pytest.raises(UnknownAliasError, match="nowhere"):
        await asyncio.wait_for(TwoAliases().bind(resources=fake)("x"), GUARD)
    assert fake.call_count == 0
    assert fake.checked == [("fast", "nowhere")]


async def test_an_unknown_alias_fails_a_batch_and_a_stream_before_any_request() -> None:
    fake = FakeResources(aliases=("fast",))
    module = TwoAliases().bind(resources=fake)
    with pytest.raises(UnknownAliasError):
        await asyncio.wait_for(module.batch(["a", "b", "c"]), GUARD)
    seen: list[Any] = []

    async def consume_stream() -> None:
        async with ExecutionSettings(streaming=True):
            async for result in module(["a", "b"]):
                seen.append(result)

    with pytest.raises(UnknownAliasError):
        await asyncio.wait_for(consume_stream(), GUARD)
    assert seen == []
    assert fake.call_count == 0


# -- errors outside the graph ------------------------------------------------------


class CallbackBroke(Exception):
    pass


def broken_callback(*args: Any) -> None:
    raise CallbackBroke(f"callback got {args!r}")


@pytest.mark.parametrize("setting", ["on_progress", "on_task_complete", "on_task_failed"])
async def test_a_raising_user_callback_ends_the_run_with_its_error(setting: str) -> None:
    fake = FakeResources()
    fake.script("b", PermanentError("b fails"))
    module = echo(fake, **{setting: broken_callback})
    with pytest.raises(CallbackBroke):
        await asyncio.wait_for(module(["a", "b", "c"]), HANG_GUARD)
    for _ in range(3):
        await asyncio.sleep(0)
    assert {task for task in asyncio.all_tasks() if task is not asyncio.current_task()} == set()


async def test_an_input_source_that_raises_ends_the_run_with_its_error() -> None:
    def source() -> Any:
        yield "a"
        raise LookupError("row 2 is unreadable")

    async def async_source() -> Any:
        yield "a"
        raise LookupError("row 2 is unreadable")

    fake = FakeResources()
    with pytest.raises(LookupError, match="row 2"):
        await asyncio.wait_for(echo(fake).batch(source()), GUARD)
    with pytest.raises(LookupError, match="row 2"):
        await asyncio.wait_for(echo(fake).batch(async_source()), GUARD)
