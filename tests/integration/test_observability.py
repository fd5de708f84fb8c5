"""Observability over real HTTP: spans, profiles and the usage report against the simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plait import LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager, format_usage
from plait.testing import Simulator

SECRET = "sk-observability-secret-42424242"
GUARD = 30.0


class Review(Module):
    """Two parallel calls on one pool, then a join on another alias."""

    def __init__(self) -> None:
        super().__init__()
        self.pros = LLMInference("pool", temperature=0.2, max_tokens=50)
        self.cons = LLMInference("pool", temperature=0.2, max_tokens=50)
        self.verdict = LLMInference("judge", temperature=0.0)

    def forward(self, text: str) -> Any:
        return self.verdict(f"Verdict on {self.pros(f'pros: {text}')} / {self.cons(text)}")


@pytest.fixture
async def resources() -> AsyncIterator[ResourceManager]:
    async with Simulator(latency=0.01) as sim:
        endpoint = {"base_url": sim.base_url, "api_key": SECRET, "max_concurrent": 4}
        config = ResourceConfig(
            {
                "pool": [{"model": "small-a", **endpoint}, {"model": "small-b", **endpoint}],
                "judge": {"model": "large", **endpoint},
            }
        ).with_prices({"small-a": (0.1, 0.4), "small-b": (0.1, 0.4), "large": (2.0, 8.0)})
        manager = ResourceManager(config)
        try:
            yield manager
        finally:
            await manager.aclose()


async def test_spans_over_http_carry_genai_attributes_and_never_the_key(
    resources: ResourceManager,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    module = Review().bind(resources=resources, tracer_provider=provider, capture_content=True)
    outputs = await asyncio.wait_for(module(["battery", "screen"]), GUARD)
    assert len(outputs) == 2
    spans = exporter.get_finished_spans()
    chats = [span for span in spans if span.name.startswith("chat ")]
    assert len(chats) == 6
    for span in chats:
        attributes = dict(span.attributes or {})
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] in ("small-a", "small-b", "large")
        assert attributes["gen_ai.response.model"]
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert attributes["plait.cost"] > 0
    assert {span.attributes["gen_ai.request.model"] for span in chats} >= {"large"}
    assert len([span for span in spans if span.name == "plait.input"]) == 2
    dump = "\n".join(
        json.dumps({"name": span.name, **dict(span.attributes or {})}, default=str)
        for span in spans
    )
    assert SECRET not in dump


async def test_the_profile_has_a_track_per_endpoint_and_every_node(
    resources: ResourceManager, tmp_path: Path
) -> None:
    path = tmp_path / "run.json"
    call = (
        Review()
        .bind(resources=resources)
        .batch([f"item {index}" for index in range(8)], profile_path=path)
    )
    await asyncio.wait_for(call, GUARD)
    trace = json.loads(path.read_text())
    processes = {
        event["args"]["name"]
        for event in trace["traceEvents"]
        if event["ph"] == "M" and event["name"] == "process_name"
    }
    assert {"pool[0] small-a", "pool[1] small-b", "judge[0] large"} <= processes
    nodes = [
        event for event in trace["traceEvents"] if event["ph"] == "X" and event["cat"] == "llm"
    ]
    assert {(event["args"]["input"], event["args"]["node"]) for event in nodes} == {
        (index, node) for index in range(8) for node in ("pros", "cons", "verdict")
    }
    assert call.profile is not None
    summary = call.profile.summary()
    assert [step.node_id for step in summary.critical_path][-1] == "verdict"
    assert summary.llm_calls == 24
    assert SECRET not in path.read_text()


async def test_the_usage_report_shows_cost_cache_hits_and_latency(
    resources: ResourceManager, tmp_path: Path
) -> None:
    module = Review().bind(resources=resources, cache=tmp_path / "cache")
    inputs = [f"item {index}" for index in range(5)]
    await asyncio.wait_for(module(inputs), GUARD)
    await asyncio.wait_for(module(inputs), GUARD)
    usage = resources.usage()
    assert (usage["pool"].requests, usage["pool"].cache_hits) == (10, 10)
    assert (usage["judge"].requests, usage["judge"].cache_hits) == (5, 5)
    assert usage["judge"].cost == pytest.approx(
        (usage["judge"].input_tokens * 2.0 + usage["judge"].output_tokens * 8.0) / 1e6
    )
    assert usage["pool"].latency_p50 > 0
    table = format_usage(usage).splitlines()
    header = table[0]
    for column in ("cache hits", "cost", "p99"):
        assert column in header
    judge = next(line for line in table if line.startswith("judge")).split()
    assert judge[:3] == ["judge", "5", "5"]
    assert judge[8] == "5"  # cache hits
    assert float(judge[9]) == pytest.approx(usage["judge"].cost, abs=1e-4)
    assert SECRET not in "\n".join(table)
