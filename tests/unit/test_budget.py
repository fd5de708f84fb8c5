"""Budgets: a run stops cleanly at its token or cost limit and can be continued."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from plait import ExecutionSettings, LLMInference
from plait.errors import BudgetExceededError, ConfigError
from plait.execution.budget import Budget
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import FakeResources
from support.llm import echo_llm, manager
from support.resources import replying

GUARD = 30.0
PER_REPLY = 6
"""Tokens the fake charges for a short prompt: 1 in (``len // 4 + 1``) + 5 out."""


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GUARD)


def prompts(count: int) -> list[str]:
    return [f"p{index}" for index in range(count)]


def test_a_budget_reports_crossing_its_limit_exactly_once() -> None:
    budget = Budget(max_tokens=10, max_cost=None)
    assert budget.charge(6, None) is False
    assert budget.charge(6, None) is True
    assert budget.charge(6, None) is False
    assert budget.exceeded
    assert (budget.tokens, budget.replies) == (18, 3)
    by_cost = Budget(max_tokens=None, max_cost=0.01)
    assert by_cost.charge(1000, 0.004) is False
    assert by_cost.charge(1000, 0.007) is True
    assert "$0.0110" in by_cost.spent()


def test_budget_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_tokens_total"):
        ExecutionSettings(max_tokens_total=0)
    with pytest.raises(ConfigError, match="max_cost"):
        ExecutionSettings(max_cost=-1.0)


async def test_a_run_stops_at_its_token_budget_and_says_how_far_it_got() -> None:
    fake = echo_llm()
    module = LLMInference("fast").bind(resources=manager(fake), max_concurrent=1)
    with pytest.raises(BudgetExceededError) as stopped:
        await bounded(module.batch(prompts(20), max_tokens_total=5 * PER_REPLY))
    # The sixth reply crossed the limit; with one call at a time nothing else was sent.
    assert len(fake.requests) == 6
    message = str(stopped.value)
    assert "max_tokens_total=30" in message
    assert "36 tokens" in message
    assert "6 of 20 inputs finished" in message
    assert "checkpoint_dir" in message


async def test_no_new_request_is_sent_once_the_budget_is_spent() -> None:
    """Calls queued at the endpoint's concurrency limit are dropped, not sent."""
    fake = echo_llm(latency=0.01)
    resources = manager(fake, max_concurrent=2)
    module = LLMInference("fast").bind(resources=resources, max_concurrent=20)
    with pytest.raises(BudgetExceededError):
        await bounded(module.batch(prompts(40), max_tokens_total=PER_REPLY))
    # The first reply spends the budget; at most the other call on the wire finishes.
    assert len(fake.requests) <= 2
    await asyncio.sleep(0.05)
    assert len(fake.requests) <= 2
    assert resources.usage()["fast"].requests == len(fake.requests)


async def test_crossing_the_limit_with_the_last_reply_is_not_an_error() -> None:
    fake = echo_llm()
    module = LLMInference("fast").bind(resources=manager(fake), max_concurrent=1)
    outputs = await bounded(module.batch(prompts(3), max_tokens_total=3 * PER_REPLY - 1))
    assert outputs == ["ECHO: p0", "ECHO: p1", "ECHO: p2"]


async def test_a_stopped_run_continues_from_its_checkpoint_with_a_higher_budget(
    tmp_path: Path,
) -> None:
    fake = echo_llm(latency=0.002)
    module = LLMInference("fast").bind(
        resources=manager(fake), checkpoint_dir=tmp_path, max_concurrent=4
    )
    with pytest.raises(BudgetExceededError, match="continue from there"):
        await bounded(module.batch(prompts(30), max_tokens_total=8 * PER_REPLY))
    spent = len(fake.requests)
    assert spent < 30
    outputs = await bounded(module.batch(prompts(30), max_tokens_total=100 * PER_REPLY))
    assert outputs == [f"ECHO: p{index}" for index in range(30)]
    # Every reply of the stopped run, in-flight ones included, was kept.
    assert len(fake.requests) == 30
    assert sorted(fake.prompts()) == sorted(prompts(30))


async def test_streaming_yields_finished_results_then_raises() -> None:
    fake = echo_llm()
    module = LLMInference("fast").bind(resources=manager(fake), max_concurrent=1)
    seen = []

    async def consume() -> None:
        async with ExecutionSettings(streaming=True, max_tokens_total=2 * PER_REPLY):
            async for result in module.batch(prompts(10)):
                seen.append(result.index)

    with pytest.raises(BudgetExceededError):
        await bounded(consume())
    assert sorted(seen) == [0, 1, 2]


async def test_a_budget_works_with_any_resource_manager() -> None:
    fake = FakeResources(replying(lambda alias, prompt: prompt))
    module = LLMInference("fast").bind(resources=fake, max_concurrent=1)
    # The fake reports no token usage, so a token budget is never reached.
    assert await bounded(module.batch(prompts(3), max_tokens_total=1)) == prompts(3)


# -- cost -------------------------------------------------------------------------------


async def test_max_cost_without_prices_fails_before_any_request() -> None:
    fake = echo_llm()
    module = LLMInference("fast").bind(resources=manager(fake))
    with pytest.raises(ConfigError, match=r"max_cost needs a price.*'fast'"):
        await bounded(module.batch(prompts(3), max_cost=1.0))
    assert len(fake.requests) == 0


async def test_a_run_stops_at_its_cost_budget() -> None:
    fake = echo_llm()
    config = ResourceConfig({"fast": {"model": "fake-model", "api_key": "k"}}).with_prices(
        {"fake-model": {"input": 1000.0, "output": 2000.0}}
    )
    resources = ResourceManager(config, client_factory=fake.factory)
    module = LLMInference("fast").bind(resources=resources, max_concurrent=1)
    per_reply = (1 * 1000.0 + 5 * 2000.0) / 1e6
    with pytest.raises(BudgetExceededError, match=r"max_cost=0\.05"):
        await bounded(module.batch(prompts(20), max_cost=0.05))
    assert len(fake.requests) == 5  # 5 x 0.011 is the first total above 0.05
    assert resources.usage()["fast"].cost == pytest.approx(5 * per_reply)


def test_prices_come_from_a_table_by_model(tmp_path: Path) -> None:
    config = ResourceConfig(
        {
            "a": {"model": "m1"},
            "b": [{"model": "m2"}, {"model": "m1", "input_price": 9.0}],
        }
    ).with_prices({"m1": (1.0, 2.0), "m2": {"input": 3.0, "output": 4.0}})
    assert (config["a"][0].input_price, config["a"][0].output_price) == (1.0, 2.0)
    assert (config["b"][0].input_price, config["b"][0].output_price) == (3.0, 4.0)
    # A price the endpoint sets itself wins over the table.
    assert (config["b"][1].input_price, config["b"][1].output_price) == (9.0, 2.0)
    with pytest.raises(ConfigError, match=r"'m1'.*output must be a number"):
        config.with_prices({"m1": {"input": 1.0, "output": -2}})

    file = tmp_path / "config.yaml"
    file.write_text(
        "endpoints:\n  fast:\n    model: m1\nprices:\n  m1:\n    input: 0.5\n    output: 1.5\n"
    )
    loaded = ResourceConfig.from_file(file)
    assert (loaded["fast"][0].input_price, loaded["fast"][0].output_price) == (0.5, 1.5)
