"""ExecutionSettings: scoping, nesting, precedence, validation and task isolation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import plait
from plait import ExecutionSettings, LLMInference
from plait.errors import ConfigError
from plait.execution.settings import ResolvedSettings, active_settings, resolve_settings
from plait.testing import FakeResources

GUARD = 30.0
DEFAULTS = ResolvedSettings()


def effective(name: str) -> Any:
    return getattr(resolve_settings(), name)


# -- scoping and nesting -----------------------------------------------------------


def test_no_block_means_defaults() -> None:
    assert active_settings() == ()
    assert resolve_settings() == DEFAULTS


def test_inner_block_overrides_only_what_it_sets() -> None:
    with ExecutionSettings(max_concurrent=5, max_task_retries=7):
        assert (effective("max_concurrent"), effective("max_task_retries")) == (5, 7)
        with ExecutionSettings(max_concurrent=2, streaming=True):
            assert effective("max_concurrent") == 2
            assert effective("max_task_retries") == 7
            assert effective("streaming") is True
            assert effective("max_inflight") == DEFAULTS.max_inflight
        assert (effective("max_concurrent"), effective("max_task_retries")) == (5, 7)
        assert effective("streaming") is False
    assert resolve_settings() == DEFAULTS


async def test_async_with_nests_like_with() -> None:
    async with ExecutionSettings(task_timeout=3.0):
        with ExecutionSettings(task_timeout=1.5, preserve_order=True):
            async with ExecutionSettings(preserve_order=False):
                assert effective("task_timeout") == 1.5
                assert effective("preserve_order") is False
            assert effective("preserve_order") is True
        assert effective("task_timeout") == 3.0
    assert effective("task_timeout") is None


def test_a_block_is_left_even_when_its_body_raises() -> None:
    with pytest.raises(RuntimeError), ExecutionSettings(max_concurrent=9):
        raise RuntimeError("boom")
    assert effective("max_concurrent") == DEFAULTS.max_concurrent


def test_the_same_block_object_can_be_re_entered() -> None:
    scope = ExecutionSettings(max_concurrent=4)
    with scope:
        with ExecutionSettings(max_concurrent=8), scope:
            assert effective("max_concurrent") == 4
        assert effective("max_concurrent") == 4
    assert effective("max_concurrent") == DEFAULTS.max_concurrent


# -- precedence --------------------------------------------------------------------


def test_precedence_call_time_over_bind_over_blocks() -> None:
    fake = FakeResources()
    outer = ExecutionSettings(max_concurrent=50, max_inflight=60, task_timeout=9.0)
    inner = ExecutionSettings(max_concurrent=40, max_inflight=30)
    with outer, inner:
        module = LLMInference("fast").bind(resources=fake, max_concurrent=3)

        single = module("x").settings
        assert single.max_concurrent == 3  # bind over the innermost block
        assert single.max_inflight == 30  # innermost block over the outer one
        assert single.task_timeout == 9.0  # outer block over the default
        assert single.max_task_retries == DEFAULTS.max_task_retries
        assert single.resources is fake

        assert module.batch(["x"], max_concurrent=2).settings.max_concurrent == 2
        assert module.batch(["x"], max_inflight=7).settings.max_concurrent == 3
        explicit = plait.run(module, "x", max_concurrent=1, task_timeout=2.0).settings
        assert (explicit.max_concurrent, explicit.task_timeout) == (1, 2.0)


async def test_precedence_governs_the_real_concurrency() -> None:
    fake = FakeResources(latency=0.01)
    prompts = [f"q{index}" for index in range(20)]
    async with ExecutionSettings(max_concurrent=10):
        module = LLMInference("fast").bind(resources=fake)
        await asyncio.wait_for(module.batch(prompts), GUARD)
        assert fake.peak == 10

        fake.peak = 0
        module.bind(resources=fake, max_concurrent=4)
        await asyncio.wait_for(module.batch(prompts), GUARD)
        assert fake.peak == 4

        fake.peak = 0
        await asyncio.wait_for(module.batch(prompts, max_concurrent=2), GUARD)
        assert fake.peak == 2

        fake.peak = 0
        await asyncio.wait_for(plait.run(module, prompts, max_concurrent=3), GUARD)
        assert fake.peak == 3


async def test_resources_follow_the_same_precedence() -> None:
    from_block, from_bind, from_run = FakeResources(), FakeResources(), FakeResources()
    module = LLMInference("fast")
    async with ExecutionSettings(resources=from_block):
        assert await asyncio.wait_for(module("a"), GUARD) == "fast(a)"
        module.bind(resources=from_bind)
        assert await asyncio.wait_for(module("b"), GUARD) == "fast(b)"
        assert await asyncio.wait_for(plait.run(module, "c", resources=from_run), GUARD)
    assert from_block.prompts() == ["a"]
    assert from_bind.prompts() == ["b"]
    assert from_run.prompts() == ["c"]


async def test_settings_are_read_when_the_call_is_made() -> None:
    fake = FakeResources()
    module = LLMInference("fast").bind(resources=fake)
    with ExecutionSettings(max_concurrent=6):
        call = module("x")
    assert call.settings.max_concurrent == 6
    assert await asyncio.wait_for(call, GUARD) == "fast(x)"


# -- validation --------------------------------------------------------------------


BAD_VALUES = [
    ("max_concurrent", 0),
    ("max_concurrent", True),
    ("max_concurrent", "8"),
    ("max_inflight", 1.5),
    ("task_timeout", 0),
    ("task_timeout", "1"),
    ("max_task_retries", -1),
    ("task_retry_delay", -0.1),
    ("streaming", 1),
    ("preserve_order", None),
    ("progress", "yes"),
    ("on_progress", 5),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_values_are_rejected_everywhere_naming_the_field(name: str, value: Any) -> None:
    module = LLMInference("fast")
    attempts: list[Callable[[], object]] = [
        lambda: ExecutionSettings(**{name: value}),
        lambda: module.bind(FakeResources(), **{name: value}),
        lambda: module.batch(["x"], **{name: value}),
        lambda: plait.run(module, "x", resources=FakeResources(), **{name: value}),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError, match=name):
            attempt()


def test_unknown_setting_names_are_rejected_everywhere() -> None:
    module = LLMInference("fast")
    attempts: list[Callable[[], object]] = [
        lambda: ExecutionSettings(max_concurency=3),
        lambda: module.bind(FakeResources(), max_concurency=3),
        lambda: module.batch(["x"], max_concurency=3),
        lambda: plait.run(module, "x", max_concurency=3),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError, match="max_concurency"):
            attempt()


def test_resources_of_the_wrong_type_are_rejected() -> None:
    with pytest.raises(ConfigError, match="resources"):
        ExecutionSettings(resources=42)


def test_good_values_are_accepted() -> None:
    scope = ExecutionSettings(
        max_concurrent=1,
        max_inflight=1,
        task_timeout=None,
        max_task_retries=0,
        task_retry_delay=0,
        on_progress=None,
        progress=False,
    )
    with scope:
        assert (effective("max_concurrent"), effective("max_task_retries")) == (1, 0)


# -- isolation between tasks -------------------------------------------------------


async def test_blocks_in_concurrent_tasks_do_not_leak_into_each_other() -> None:
    both_inside = asyncio.Barrier(2)
    seen: dict[str, int] = {}

    async def worker(name: str, limit: int) -> None:
        async with ExecutionSettings(max_concurrent=limit):
            await both_inside.wait()  # the other task is inside its own block now
            seen[name] = effective("max_concurrent")
            await both_inside.wait()

    await asyncio.wait_for(asyncio.gather(worker("a", 3), worker("b", 11)), GUARD)

    assert seen == {"a": 3, "b": 11}
    assert effective("max_concurrent") == DEFAULTS.max_concurrent


async def test_tasks_inherit_the_enclosing_block_but_cannot_change_it() -> None:
    async def child() -> tuple[int, int]:
        inherited = effective("max_concurrent")
        ExecutionSettings(max_concurrent=99).__enter__()  # never exited: only this task sees it
        return inherited, effective("max_concurrent")

    with ExecutionSettings(max_concurrent=5):
        inherited, inside = await asyncio.create_task(child())
        assert effective("max_concurrent") == 5
    assert (inherited, inside) == (5, 99)
