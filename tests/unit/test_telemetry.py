"""OpenTelemetry spans, read back with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from plait import LLMInference
from plait.errors import BatchError, TransientError
from plait.profiling import tracer_for
from plait.testing import FakeResources, MockClient
from support.llm import SECRET, EchoLLM, echo_llm, manager
from support.modules import Chain

GUARD = 30.0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GUARD)


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


def everything_in(spans: tuple[ReadableSpan, ...]) -> str:
    """Every name, attribute, event and status of the spans, as one string."""
    parts = []
    for span in spans:
        parts.append(span.name)
        parts.append(json.dumps(dict(span.attributes or {}), default=str))
        parts.extend(json.dumps(dict(event.attributes or {}), default=str) for event in span.events)
        parts.append(str(span.status.description))
    return "\n".join(parts)


async def test_llm_spans_carry_the_genai_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    fake = echo_llm()
    module = Chain().bind(resources=manager(fake), tracer_provider=provider)
    module.first.temperature = 0.3
    module.first.max_tokens = 64
    await bounded(module(["hello"]))
    spans = exporter.get_finished_spans()
    chats = by_name(spans, "chat ")
    assert len(chats) == 2
    first = next(span for span in chats if span.attributes["plait.node_id"] == "first")
    attributes = dict(first.attributes or {})
    assert first.name == "chat fake-model"
    assert first.kind is trace.SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "fake-model"
    assert attributes["gen_ai.request.temperature"] == 0.3
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert attributes["gen_ai.response.model"] == "fake-model-0613"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.usage.input_tokens"] == 2
    assert attributes["gen_ai.usage.output_tokens"] == 5
    assert attributes["plait.alias"] == "fast"
    assert attributes["plait.retries"] == 0
    assert attributes["plait.endpoint"] == "fast[0] fake-model"
    assert "gen_ai.input.messages" not in attributes
    assert "gen_ai.output.messages" not in attributes


async def test_spans_nest_run_input_node(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    module = Chain().bind(resources=FakeResources(), tracer_provider=provider)
    await bounded(module(["a", "b"]))
    spans = exporter.get_finished_spans()
    (run,) = by_name(spans, "plait.run")
    inputs = by_name(spans, "plait.input")
    nodes = by_name(spans, "chat")
    assert run.attributes["plait.module"] == "Chain"
    assert run.attributes["plait.inputs"] == 2
    assert sorted(span.attributes["plait.input.index"] for span in inputs) == [0, 1]
    assert all(
        span.parent is not None and span.parent.span_id == run.context.span_id for span in inputs
    )
    input_ids = {span.attributes["plait.input.index"]: span.context.span_id for span in inputs}
    assert len(nodes) == 4
    for node in nodes:
        assert node.parent is not None
        assert node.parent.span_id == input_ids[node.attributes["plait.input.index"]]
        assert node.context.trace_id == run.context.trace_id


async def test_content_is_recorded_only_when_asked(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    fake = echo_llm()
    module = LLMInference("fast", system_prompt="be kind").bind(
        resources=manager(fake), tracer_provider=provider, capture_content=True
    )
    await bounded(module("secret plans"))
    (chat,) = by_name(exporter.get_finished_spans(), "chat")
    messages = json.loads(chat.attributes["gen_ai.input.messages"])
    assert messages == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "secret plans"},
    ]
    reply = json.loads(chat.attributes["gen_ai.output.messages"])
    assert reply == [{"role": "assistant", "content": "ECHO: secret plans"}]


async def test_errors_set_the_status_and_retries_are_counted(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    fake = FakeResources()
    fake.script("flaky", TransientError("503 from upstream"))
    fake.script("doomed", *[TransientError("down")] * 3)
    module = LLMInference("fast").bind(
        resources=fake, tracer_provider=provider, max_task_retries=1, task_retry_delay=0.001
    )
    with pytest.raises(BatchError):
        await bounded(module(["flaky", "doomed"]))
    spans = exporter.get_finished_spans()
    chats = by_name(spans, "chat")
    failed = [span for span in chats if span.status.status_code is StatusCode.ERROR]
    assert len(chats) == 4
    assert len(failed) == 3
    assert {span.attributes["plait.retries"] for span in chats} == {0, 1}
    assert all(span.attributes["error.type"] == "TransientError" for span in failed)
    assert all(span.events and span.events[0].name == "exception" for span in failed)
    (doomed,) = [
        span for span in by_name(spans, "plait.input") if span.attributes["plait.input.index"] == 1
    ]
    assert doomed.status.status_code is StatusCode.ERROR
    (run,) = by_name(spans, "plait.run")
    assert run.status.status_code is StatusCode.UNSET


async def test_the_api_key_never_reaches_a_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    llm = EchoLLM()
    fake = MockClient(llm)
    llm.fail_prompts.add("then:ECHO: refused")
    module = Chain().bind(resources=manager(fake), tracer_provider=provider, capture_content=True)
    with pytest.raises(BatchError):
        await bounded(module(["ordinary", "refused"]))
    spans = exporter.get_finished_spans()
    assert len(by_name(spans, "chat")) == 4
    assert any(span.status.status_code is StatusCode.ERROR for span in spans)
    assert SECRET not in everything_in(spans)


async def test_checkpoint_restored_inputs_are_marked(
    provider: TracerProvider, exporter: InMemorySpanExporter, tmp_path: Any
) -> None:
    module = LLMInference("fast").bind(resources=FakeResources(), checkpoint_dir=tmp_path)
    await bounded(module(["a"]))
    await bounded(module.batch(["a"], tracer_provider=provider))
    spans = exporter.get_finished_spans()
    (restored,) = by_name(spans, "plait.input")
    assert restored.attributes["plait.checkpoint.restored"] is True
    assert by_name(spans, "chat") == []


def test_no_sdk_means_no_tracer(monkeypatch: pytest.MonkeyPatch, provider: TracerProvider) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    assert tracer_for() is None
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.NoOpTracerProvider())
    assert tracer_for() is None
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert tracer_for() is not None
    assert tracer_for(provider) is not None
