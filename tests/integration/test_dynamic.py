"""Dynamic modules (``async def forward``) on the engine, over real HTTP to the simulator.

Each test judges by what the server saw (requests, peak concurrency) as well
as by the outputs: a loop that follows the replies sends exactly the rounds
the replies asked for, a map holds the endpoint cap, and a stream left early
sends nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import plait
import plait.functional as F
from plait import LLMInference, Module
from plait.errors import BudgetExceededError, TracingError, TransientError
from plait.graph import NodeKind
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator

GUARD = 30.0


def prompt_of(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def reply(body: dict[str, Any]) -> str:
    """Drafts carry a version; the judge passes a draft once it reaches the version the
    task asks for; a splitter answers with as many pieces as the text names."""
    prompt = prompt_of(body)
    if prompt.startswith("Judge:"):
        wanted = int(prompt.split("needs v", 1)[1].split()[0])
        have = int(prompt.split("draft v", 1)[1].split()[0])
        return "PASS" if have >= wanted else "FAIL add detail"
    if prompt.startswith("Write:"):
        return "draft v1"
    if prompt.startswith("Fix:"):
        return f"draft v{int(prompt.split('draft v', 1)[1].split()[0]) + 1}"
    if prompt.startswith("Split:"):
        count = int(prompt.split()[-1])
        return ";".join(f"piece{index}" for index in range(count))
    return "ECHO: " + prompt


def manager(base_url: str, max_concurrent: int = 8, **aliases: Any) -> ResourceManager:
    endpoint = {"model": "sim", "base_url": base_url, "max_concurrent": max_concurrent}
    config = {"fast": endpoint, "smart": endpoint, **aliases}
    return ResourceManager(ResourceConfig(config))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(latency=0.02, reply=reply) as server:
        yield server


class Refine(Module):
    """Write, then judge and fix until the judge passes (at most ``rounds`` fixes)."""

    def __init__(self, rounds: int = 4) -> None:
        super().__init__()
        self.rounds = rounds
        self.write = LLMInference("fast")
        self.judge = LLMInference("smart")

    async def forward(self, task: str) -> str:
        draft = await self.write(f"Write: {task}")
        for _ in range(self.rounds):
            verdict = await self.judge(f"Judge: {task}\nDraft: {draft}")
            if verdict == "PASS":
                break
            draft = await self.write(f"Fix: {task} {draft}")
        return draft


async def test_loop_rounds_follow_the_replies(sim: Simulator) -> None:
    resources = manager(sim.base_url)
    try:
        module = Refine().bind(resources=resources)
        outputs = await asyncio.wait_for(module(["needs v1", "needs v3"]), GUARD)
    finally:
        await resources.aclose()
    assert outputs == ["draft v1", "draft v3"]
    # v1: write, judge (pass); v3: write, 2 x (judge, fix), judge (pass)
    assert sim.stats().completed == 2 + 6


class Chunked(Module):
    """Map-reduce over as many pieces as a first call returns."""

    def __init__(self) -> None:
        super().__init__()
        self.split = LLMInference("fast")
        self.summarise = LLMInference("fast")

    async def forward(self, count: int) -> str:
        pieces = (await self.split(f"Split: {count}")).split(";")
        return " | ".join(await F.map(self.summarise, pieces))


async def test_a_map_over_a_variable_number_of_pieces_holds_the_endpoint_cap(
    sim: Simulator,
) -> None:
    resources = manager(sim.base_url, max_concurrent=3)
    try:
        module = Chunked().bind(resources=resources)
        outputs = await asyncio.wait_for(module.batch([1, 2, 3, 4, 5] * 2), GUARD)
    finally:
        await resources.aclose()
    assert outputs[4] == " | ".join(f"ECHO: piece{index}" for index in range(5))
    assert [output.count("|") + 1 for output in outputs] == [1, 2, 3, 4, 5] * 2
    stats = sim.stats()
    assert stats.completed == 10 + 30
    assert stats.peak_concurrency <= 3


async def test_pieces_of_one_input_run_concurrently() -> None:
    async with Simulator(latency=0.2, reply=reply) as server:
        resources = manager(server.base_url, max_concurrent=8)
        try:
            module = Chunked().bind(resources=resources)
            started = time.perf_counter()
            output = await asyncio.wait_for(module(5), GUARD)
            elapsed = time.perf_counter() - started
        finally:
            await resources.aclose()
        assert output.count("|") == 4
        assert server.stats().peak_concurrency == 5
        assert elapsed < 0.2 * 4  # split + one round of pieces, not five


class Upper(Module):
    """A traced composite: two calls in sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.a = LLMInference("fast")
        self.b = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.b(f"B {self.a(f'A {text}')}")


class Middle(Module):
    """Dynamic: runs the traced ``Upper`` as a sub-run until its reply is long enough."""

    def __init__(self) -> None:
        super().__init__()
        self.upper = Upper()

    async def forward(self, text: str) -> str:
        out = await self.upper(text)
        while len(out) < 30:
            out = await self.upper(out)
        return out


class Outer(Module):
    """Traced around the dynamic ``Middle``."""

    def __init__(self) -> None:
        super().__init__()
        self.first = LLMInference("fast")
        self.middle = Middle()
        self.last = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.last(f"Last {self.middle(self.first(text))}")


async def test_traced_then_dynamic_then_traced(sim: Simulator) -> None:
    module = Outer()
    graph = plait.trace(module, "x")
    assert graph.nodes["middle"].kind is NodeKind.DYNAMIC
    assert "(dynamic)" in graph.to_mermaid()
    assert "style=dashed" in graph.to_dot()
    resources = manager(sim.base_url)
    try:
        output = await asyncio.wait_for(module.bind(resources=resources)("x"), GUARD)
    finally:
        await resources.aclose()
    inner = "ECHO: B ECHO: A ECHO: x"
    assert output == f"ECHO: Last ECHO: B ECHO: A {inner}"
    assert sim.stats().completed == 1 + 2 * 2 + 1


def refuse(seq: int, body: dict[str, Any]) -> str | None:
    return "400" if "BAD" in prompt_of(body) else None


class Fallback(Module):
    """Retry with a fallback model: the error of the first call is caught inside."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = LLMInference("fast")
        self.backup = LLMInference("smart")

    async def forward(self, text: str) -> str:
        try:
            return await self.primary(text)
        except TransientError:
            return await self.backup(f"fallback {text.replace('BAD', 'bad')}")


class NoFallback(Module):
    def __init__(self) -> None:
        super().__init__()
        self.primary = LLMInference("fast")

    async def forward(self, text: str) -> str:
        return await self.primary(text)


async def test_a_child_error_is_raised_inside_the_forward_and_can_be_caught() -> None:
    async with Simulator(fault=lambda seq, body: _bad(body)) as server:
        resources = manager(server.base_url)
        try:
            module = Fallback().bind(resources=resources, max_task_retries=0)
            outputs = await asyncio.wait_for(module(["ok", "BAD one"]), GUARD)
            assert outputs == ["ECHO: ok", "ECHO: fallback bad one"]
            results = [
                result
                async for result in NoFallback()
                .bind(resources=resources, max_task_retries=0, streaming=True)
                .batch(["ok", "BAD one", "fine"])
            ]
        finally:
            await resources.aclose()
    failed = {result.index: result for result in results if not result.ok}
    assert list(failed) == [1]  # uncaught, it fails that input only
    assert isinstance(failed[1].error, TransientError)


def _bad(body: dict[str, Any]) -> str | None:
    return "malformed" if "BAD" in prompt_of(body) else None


class Forever(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    async def forward(self, text: str) -> str:
        if text == "quick":
            return await self.llm(text)
        while True:
            text = await self.llm(text)


async def test_leaving_a_stream_early_stops_every_dynamic_input() -> None:
    async with Simulator(latency=0.03) as server:
        resources = manager(server.base_url)
        try:
            module = Forever().bind(resources=resources, streaming=True)
            async for result in module.batch(["quick", "a", "b", "c"]):
                assert result.output == "ECHO: quick"
                break
            await asyncio.sleep(0.1)
            sent = server.stats().requests
            await asyncio.sleep(0.3)
            assert server.stats().requests == sent
            assert server.stats().in_flight == 0
        finally:
            await resources.aclose()


class Nest(Module):
    """Dynamic all the way down: each level awaits the next, then one call of its own."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.llm = LLMInference("fast")
        self.inner = Nest(depth - 1) if depth > 1 else None

    async def forward(self, text: str) -> str:
        if self.inner is not None:
            text = await self.inner(text)
        return await self.llm(f"{text}+")


async def test_nesting_six_deep_with_max_concurrent_one_finishes(sim: Simulator) -> None:
    resources = manager(sim.base_url, max_concurrent=1)
    try:
        module = Nest(6).bind(resources=resources, max_concurrent=1)
        outputs = await asyncio.wait_for(module(["x", "y", "z"]), GUARD)
    finally:
        await resources.aclose()
    assert outputs[0].count("ECHO") == 6
    assert sim.stats().completed == 18
    assert sim.stats().peak_concurrency == 1


def test_every_call_pattern_runs_a_dynamic_module() -> None:
    with Simulator(latency=0.02, reply=reply) as server:
        resources = manager(server.base_url)
        assert Refine().bind(resources=resources).run_sync("needs v1") == "draft v1"
        asyncio.run(_patterns(resources))


async def _patterns(resources: ResourceManager) -> None:
    try:
        module = Refine().bind(resources=resources)
        assert await module("needs v2") == "draft v2"
        assert await module.batch(["needs v1", "needs v2"]) == ["draft v1", "draft v2"]
        streamed = [r.output async for r in module.batch(["needs v1"], streaming=True)]
        assert streamed == ["draft v1"]
        assert await plait.run(Refine(), "needs v2", resources=resources) == "draft v2"
    finally:
        await resources.aclose()


async def test_child_calls_nest_under_the_dynamic_span_and_are_counted(
    sim: Simulator, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    resources = manager(sim.base_url)
    try:
        module = Refine().bind(
            resources=resources,
            tracer_provider=provider,
            profile=True,
            profile_path=tmp_path / "profile.json",
        )
        call = module("needs v2")
        assert await call == "draft v2"
        usage = resources.usage()
    finally:
        await resources.aclose()
    spans = exporter.get_finished_spans()
    (dynamic,) = [span for span in spans if span.name.startswith("plait.node")]
    chats = [span for span in spans if span.name.startswith("chat")]
    assert len(chats) == 4
    assert all(span.parent is not None for span in chats)
    assert {span.parent.span_id for span in chats if span.parent} == {dynamic.context.span_id}
    assert usage["fast"].requests + usage["smart"].requests == 4
    profile = call.profile
    assert profile is not None
    events = profile.chrome_trace()["traceEvents"]
    names = [event.get("args", {}).get("parent") for event in events if event.get("ph") == "X"]
    assert names.count("refine") == 4


async def test_cache_and_budget_apply_to_calls_inside_a_forward(
    sim: Simulator, tmp_path: Any
) -> None:
    resources = manager(sim.base_url)
    try:
        cached = Refine().bind(resources=resources, cache=tmp_path / "cache.db")
        assert await cached("needs v2") == "draft v2"
        before = sim.stats().completed
        assert await cached("needs v2") == "draft v2"
        assert sim.stats().completed == before  # every call inside came from the cache
        spender = Forever().bind(resources=resources, max_tokens_total=60)
        with pytest.raises(BudgetExceededError):
            await asyncio.wait_for(spender("x"), GUARD)
    finally:
        await resources.aclose()


async def test_retries_inside_a_forward(sim: Simulator) -> None:
    failures = {"left": 2}

    def flaky(seq: int, body: dict[str, Any]) -> str | None:
        if failures["left"]:
            failures["left"] -= 1
            return "503"
        return None

    async with Simulator(fault=flaky) as server:
        resources = manager(server.base_url)
        try:
            module = NoFallback().bind(resources=resources, task_retry_delay=0.01)
            assert await asyncio.wait_for(module("x"), GUARD) == "ECHO: x"
        finally:
            await resources.aclose()
        assert server.stats().requests == 3


def test_f_map_while_tracing_says_to_use_async_def() -> None:
    class Traced(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("fast")

        def forward(self, items: Any) -> Any:
            return F.map(self.llm, items)

    with pytest.raises(TracingError, match="async def forward"):
        plait.trace(Traced(), ["a"])


async def test_depth_first_a_two_stage_batch_streams_its_first_result_early() -> None:
    async with Simulator(latency=0.05) as server:
        resources = manager(server.base_url, max_concurrent=4)
        try:
            module = Upper().bind(resources=resources, streaming=True)
            async for result in module.batch([f"q{index}" for index in range(60)]):
                assert result.ok
                sent = server.stats().requests
                break
        finally:
            await resources.aclose()
    # Breadth first would send every first stage (60) before any second stage.
    assert sent <= 3 * 4
