"""The Evaluator: scores, rows, limits, progress, and resuming a killed evaluation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from plait import ExecutionSettings, LLMInference
from plait.clients.base import ChatRequest
from plait.errors import ConfigError, MetricError, PermanentError
from plait.optimization import EvalResult, Evaluator
from plait.testing import FakeResources, prompt_of
from support.learning import DEV, Classifier, accuracy, model
from support.llm import echo_llm, manager


async def test_scores_and_rows_follow_the_examples() -> None:
    resources = model()
    module = Classifier(instruction="Name the category.").bind(resources)
    examples = [*DEV[:3], ("apple", "tree")]
    result = await Evaluator(examples, accuracy)(module)
    assert isinstance(result, EvalResult)
    assert result.score == 0.75
    assert result.scores == (1.0, 1.0, 1.0, 0.0)
    assert [row.index for row in result.rows] == [0, 1, 2, 3]
    assert [(row.input, row.target) for row in result.rows] == examples
    assert [row.output for row in result.rows] == ["fruit", "fruit", "tree", "fruit"]
    assert all(row.error is None for row in result.rows)
    assert result.metric_calls == 4
    assert result.wall_time > 0
    assert result.usage is None  # the fake counts no usage
    assert not module.training


async def test_a_failed_call_scores_zero_and_keeps_its_error() -> None:
    resources = FakeResources({"fast": ["fruit", PermanentError("refused"), "tree"]})
    module = LLMInference("fast").bind(resources, max_concurrent=1)
    calls: list[Any] = []

    def metric(output: Any, target: Any) -> float:
        calls.append(output)
        return 1.0 if output == target else 0.0

    result = await Evaluator([("a", "fruit"), ("b", "fruit"), ("c", "tree")], metric)(module)
    assert result.scores == (1.0, 0.0, 1.0)
    assert isinstance(result.rows[1].error, PermanentError)
    assert result.rows[1].output is None
    assert result.errors == 1
    assert calls == ["fruit", "tree"]  # no metric call for the failed input
    assert result.metric_calls == 2


async def test_bool_float_and_async_metrics() -> None:
    module = LLMInference("fast").bind(FakeResources({"fast": "x"}))

    async def half(output: Any, target: Any) -> float:
        await asyncio.sleep(0)
        return 0.5

    assert (await Evaluator([("a", 1)], lambda o, t: True)(module)).score == 1.0
    assert (await Evaluator([("a", 1)], half)(module)).score == 0.5
    with pytest.raises(MetricError, match="from 0 to 1"):
        await Evaluator([("a", 1)], lambda o, t: 2.0)(module)
    with pytest.raises(MetricError):
        await Evaluator([("a", 1)], lambda o, t: "yes")(module)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="example 1"):
        Evaluator([("a", 1), "b"], accuracy)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="callable"):
        Evaluator([("a", 1)], "accuracy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown setting"):
        Evaluator([("a", 1)], accuracy, max_concurency=2)


async def test_examples_run_concurrently_under_the_limits() -> None:
    examples = [(str(i), "x") for i in range(12)]
    free = FakeResources({"fast": "x"}, latency=0.01)
    await Evaluator(examples, accuracy)(LLMInference("fast").bind(free))
    assert free.peak == 12  # one batch: every example at once
    limited = FakeResources({"fast": "x"}, latency=0.01)
    await Evaluator(examples, accuracy, max_concurrent=3)(LLMInference("fast").bind(limited))
    assert limited.peak == 3


async def test_endpoint_limits_hold_and_usage_is_counted() -> None:
    client = echo_llm(latency=0.01)
    resources = manager(client, max_concurrent=2)
    module = LLMInference("fast").bind(resources)
    result = await Evaluator([(f"q{i}", "x") for i in range(6)], lambda o, t: 0.0)(module)
    assert client.peak == 2
    assert result.usage is not None
    assert result.usage.requests == 6
    assert result.usage.output_tokens == 6 * 5
    assert result.cost == 0.0
    await resources.aclose()


async def test_progress_is_reported() -> None:
    seen: list[tuple[int, int | None]] = []
    module = LLMInference("fast").bind(FakeResources({"fast": "x"}))
    evaluator = Evaluator(
        [("a", "x"), ("b", "x"), ("c", "x")],
        accuracy,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    await evaluator(module)
    assert seen[-1] == (3, 3)
    assert [done for done, _ in seen] == [1, 2, 3]


async def test_a_killed_evaluation_resumes_without_repeating_finished_examples(
    tmp_path: Path,
) -> None:
    reached = asyncio.Event()
    release = asyncio.Event()

    async def reply(request: ChatRequest) -> str:
        if prompt_of(request) == "e3" and not release.is_set():
            reached.set()
            await release.wait()
        return "x"

    resources = FakeResources({"fast": reply})
    module = LLMInference("fast").bind(resources, max_concurrent=1)
    examples = [(f"e{i}", "x") for i in range(6)]
    evaluator = Evaluator(examples, accuracy, checkpoint_dir=tmp_path)
    task = asyncio.ensure_future(evaluator(module))
    await reached.wait()
    task.cancel()  # killed while e3 is in flight: e0..e2 are done
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    before = resources.call_count
    result = await evaluator(module)
    assert result.scores == (1.0,) * 6
    assert sorted(resources.prompts()[before:]) == ["e3", "e4", "e5"]

    # A changed module is a new version: its outputs are computed, the old ones kept.
    changed = LLMInference("fast", system_prompt="Be brief.").bind(resources)
    again = await evaluator(changed)
    assert resources.call_count == before + 3 + 6
    assert again.metric_calls == 6
    async with ExecutionSettings(resources=resources):
        await evaluator(module)
    assert resources.call_count == before + 3 + 6  # the first version's outputs are reused
