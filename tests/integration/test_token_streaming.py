"""Token streaming over real HTTP: the simulator sends SSE, both clients read it.

Each test runs once per client, so the lean client and the SDK client are
held to the same deltas, the same usage and the same early-exit behaviour.
A slow ``stream_pace`` lets a test see a delta while the server is still
sending, and the server's own counters say when a stream was cut off.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from plait import ExecutionSettings, LLMInference, Module
from plait.errors import ConfigError, ResponseTooLargeError, StreamInterruptedError
from plait.resources import ResourceManager
from plait.resources.usage import format_usage
from plait.testing import Simulator, ToolCallReply
from plait.tools import AssistantMessage

Client = Literal["lean", "openai"]
CLIENTS: list[Client] = ["lean", "openai"]
REPLY = "The quick brown fox jumps over the lazy dog, twice over."
GUARD = 30.0


def manager(sim: Simulator, client: Client, **endpoint: Any) -> ResourceManager:
    config = {"model": "sim-model", "base_url": sim.base_url, "client": client, **endpoint}
    return ResourceManager({"llm": config})


async def collect(stream: Any) -> list[str]:
    return [delta async for delta in stream]


async def until(condition: Any) -> None:
    """Wait for the server's counters to show something; fail if they never do."""
    deadline = time.monotonic() + 5.0
    while not condition():
        assert time.monotonic() < deadline, "the simulator never saw it"
        await asyncio.sleep(0.01)


class DraftThenPolish(Module):
    """Two calls in a row: only the second, the output, should stream."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = LLMInference("llm", system_prompt="draft")
        self.polish = LLMInference("llm", system_prompt="polish")

    def forward(self, topic: str) -> Any:
        return self.polish(self.draft(topic))


class Shout(Module):
    def forward(self, text: str) -> str:
        return text.upper()


class AnswerThenShout(Module):
    """An output node that is not an LLM call."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = LLMInference("llm")
        self.shout = Shout()

    def forward(self, question: str) -> Any:
        return self.shout(self.answer(question))


def by_system_prompt(body: dict[str, Any]) -> str:
    system = body["messages"][0]["content"]
    return "a rough draft about foxes" if system == "draft" else REPLY


@pytest.mark.parametrize("client", CLIENTS)
async def test_deltas_join_to_the_reply_and_arrive_before_it_is_complete(client: Client) -> None:
    async with Simulator(reply=lambda body: REPLY, stream_pace=0.02) as sim:
        llm = LLMInference("llm").bind(resources=manager(sim, client))
        stream = llm.stream("tell me")
        deltas: list[str] = []
        finished_when_first_seen: int | None = None
        async for delta in stream:
            if not deltas:
                finished_when_first_seen = sim.stats().streams_completed
            deltas.append(delta)
        stats = sim.stats()
    assert "".join(deltas) == REPLY
    assert stream.output == REPLY
    assert len(deltas) == -(-len(REPLY) // 4)  # the simulator's 4-character pieces
    assert finished_when_first_seen == 0  # seen while the server was still sending
    assert (stats.requests, stats.streams, stats.streams_completed) == (1, 1, 1)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_pipeline_streams_its_output_node_only(client: Client) -> None:
    async with Simulator(reply=by_system_prompt, stream_pace=0.005) as sim:
        pipeline = DraftThenPolish().bind(resources=manager(sim, client))
        stream = pipeline.stream("foxes")
        deltas = await asyncio.wait_for(collect(stream), GUARD)
        stats = sim.stats()
    assert "".join(deltas) == REPLY
    assert len(deltas) > 1
    assert stream.output == REPLY
    assert stats.requests == 2
    assert stats.streams == 1  # the draft was an ordinary request


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_output_that_is_not_an_llm_call_is_yielded_once(client: Client) -> None:
    async with Simulator(reply=lambda body: "quiet answer") as sim:
        pipeline = AnswerThenShout().bind(resources=manager(sim, client))
        stream = pipeline.stream("q")
        deltas = await asyncio.wait_for(collect(stream), GUARD)
        stats = sim.stats()
    assert deltas == ["QUIET ANSWER"]
    assert stream.output == "QUIET ANSWER"
    assert stats.streams == 0


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("leave", ["break", "aclose", "cancel"])
async def test_leaving_early_closes_the_stream_and_releases_the_slot(
    client: Client, leave: str
) -> None:
    long_reply = "word " * 400
    async with Simulator(reply=lambda body: long_reply, stream_pace=0.02) as sim:
        resources = manager(sim, client, max_concurrent=1)
        llm = LLMInference("llm").bind(resources=resources)
        if leave == "break":
            async for _ in llm.stream("go"):
                break
        elif leave == "aclose":
            stream = llm.stream("go")
            await anext(stream)
            await stream.aclose()
        else:
            first = asyncio.Event()

            async def consume() -> None:
                async for _ in llm.stream("go"):
                    first.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), GUARD)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await until(lambda: sim.stats().streams_aborted == 1)
        assert sim.stats().in_flight == 0
        # The only slot is free again: the next call gets it and completes.
        sim_reply = await asyncio.wait_for(llm("again"), GUARD)
        stats = sim.stats()
    assert sim_reply == long_reply
    assert stats.streams_completed == 0
    assert stats.requests == 2


@pytest.mark.parametrize("client", CLIENTS)
async def test_the_slot_is_held_until_the_stream_ends(client: Client) -> None:
    async with Simulator(reply=lambda body: REPLY, stream_pace=0.01) as sim:
        resources = manager(sim, client, max_concurrent=1)
        llm = LLMInference("llm").bind(resources=resources)
        streams = [llm.stream(f"q{i}") for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in streams)), GUARD)
        stats = sim.stats()
    assert ["".join(deltas) for deltas in results] == [REPLY] * 3
    assert stats.streams_completed == 3
    assert stats.peak_concurrency == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_usage_and_time_to_first_token_are_recorded(client: Client) -> None:
    async with Simulator(reply=lambda body: REPLY, latency=0.05, stream_pace=0.02) as sim:
        resources = manager(sim, client)
        llm = LLMInference("llm").bind(resources=resources)
        await asyncio.wait_for(collect(llm.stream("tell me")), GUARD)
        stats = sim.stats()
    usage = resources.usage()["llm"]
    assert (usage.requests, usage.successes, usage.streams) == (1, 1, 1)
    assert usage.input_tokens == stats.prompt_tokens > 0
    assert usage.output_tokens == stats.completion_tokens > 0
    # The first delta waits out the server's latency; the whole stream its pace too.
    assert 0.05 <= usage.ttft_p50 < usage.latency_p50
    assert usage.ttft_p95 >= usage.ttft_p50
    assert usage.latency_p50 - usage.ttft_p50 >= 0.1
    table = format_usage(resources.usage())
    assert "ttft p50" in table
    assert "ttft p95" in table
    assert usage.as_dict()["ttft_p50"] == usage.ttft_p50


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_finished_stream_is_cached_and_served_without_a_request(
    client: Client, tmp_path: Path
) -> None:
    async with Simulator(reply=lambda body: REPLY, stream_pace=0.002) as sim:
        resources = manager(sim, client)
        llm = LLMInference("llm").bind(resources=resources, cache=tmp_path / "cache")
        first = await asyncio.wait_for(collect(llm.stream("tell me")), GUARD)
        again = await asyncio.wait_for(collect(llm.stream("tell me")), GUARD)
        whole = await asyncio.wait_for(llm("tell me"), GUARD)
        stats = sim.stats()
    assert len(first) > 1
    assert again == [REPLY]
    assert whole == REPLY
    assert stats.requests == 1
    assert resources.usage()["llm"].cache_hits == 2


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_finished_stream_is_checkpointed_and_replayed_without_a_request(
    client: Client, tmp_path: Path
) -> None:
    async with Simulator(reply=by_system_prompt, stream_pace=0.002) as sim:
        resources = manager(sim, client)
        with ExecutionSettings(checkpoint_dir=tmp_path):
            first = await asyncio.wait_for(
                collect(DraftThenPolish().bind(resources=resources).stream("foxes")), GUARD
            )
            replay = DraftThenPolish().bind(resources=resources).stream("foxes")
            again = await asyncio.wait_for(collect(replay), GUARD)
        stats = sim.stats()
    assert "".join(first) == REPLY
    assert again == [REPLY]
    assert replay.output == REPLY
    assert stats.requests == 2  # the first run's two calls; the replay sent none


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fault", ["503", "reset", "429"])
async def test_a_stream_failing_before_its_first_delta_is_retried(
    client: Client, fault: str
) -> None:
    async with Simulator(
        reply=lambda body: REPLY,
        stream_pace=0.002,
        retry_after=0.01,
        fault=lambda seq, body: fault if seq == 0 else None,
    ) as sim:
        resources = manager(sim, client)
        llm = LLMInference("llm").bind(resources=resources)
        deltas = await asyncio.wait_for(collect(llm.stream("tell me")), GUARD)
        stats = sim.stats()
    assert "".join(deltas) == REPLY
    assert stats.requests == 2
    assert stats.faults == {fault: 1}
    assert resources.usage()["llm"].failures == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stream_cut_midway_raises_and_is_neither_retried_nor_cached(
    client: Client, tmp_path: Path
) -> None:
    async with Simulator(
        reply=lambda body: REPLY,
        stream_pace=0.002,
        fault=lambda seq, body: "cut" if seq == 0 else None,
    ) as sim:
        llm = LLMInference("llm").bind(resources=manager(sim, client), cache=tmp_path / "c")
        deltas: list[str] = []

        async def consume() -> None:
            async for delta in llm.stream("tell me"):
                deltas.append(delta)

        with pytest.raises(StreamInterruptedError, match="broke after 4 characters"):
            await asyncio.wait_for(consume(), GUARD)
        assert sim.stats().requests == 1  # not retried under the text already shown
        again = await asyncio.wait_for(collect(llm.stream("tell me")), GUARD)
        stats = sim.stats()
    assert deltas == [REPLY[:4]]
    assert "".join(again) == REPLY
    assert len(again) > 1  # sent again, not served a truncated answer from the cache
    assert stats.requests == 2


class Answer(BaseModel):
    city: str
    population: int


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_structured_reply_streams_its_json_and_ends_as_the_model(client: Client) -> None:
    text = '{"city": "Paris", "population": 2100000}'
    async with Simulator(reply=lambda body: text, stream_pace=0.001) as sim:
        llm = LLMInference("llm", response_format=Answer).bind(resources=manager(sim, client))
        stream = llm.stream("the capital of France?")
        deltas = await asyncio.wait_for(collect(stream), GUARD)
    assert "".join(deltas) == text
    assert stream.output == Answer(city="Paris", population=2_100_000)


@pytest.mark.parametrize("client", CLIENTS)
async def test_stream_spans_carry_time_to_first_token(client: Client) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Simulator(reply=lambda body: REPLY, latency=0.03, stream_pace=0.01) as sim:
        llm = LLMInference("llm").bind(resources=manager(sim, client), tracer_provider=provider)
        await asyncio.wait_for(collect(llm.stream("tell me")), GUARD)
        stats = sim.stats()
    (chat,) = [span for span in exporter.get_finished_spans() if span.name.startswith("chat")]
    attributes = dict(chat.attributes or {})
    assert attributes["plait.streamed"] is True
    assert attributes["gen_ai.usage.output_tokens"] == stats.completion_tokens
    duration = ((chat.end_time or 0) - (chat.start_time or 0)) / 1e9
    assert 0.03 <= float(attributes["gen_ai.server.time_to_first_token"]) < duration


@pytest.mark.parametrize("client", CLIENTS)
async def test_stream_as_a_request_option_is_refused_pointing_at_stream(client: Client) -> None:
    async with Simulator() as sim:
        llm = LLMInference("llm").bind(resources=manager(sim, client))
        with pytest.raises(ConfigError, match=r"module\.stream\(prompt\)"):
            await llm("hi", stream=True)
        with pytest.raises(ConfigError, match=r"module\.stream\(prompt\)"):
            LLMInference("llm", stream=True)
        with pytest.raises(ConfigError, match="temprature"):
            await asyncio.wait_for(collect(llm.stream("hi", temprature=0)), GUARD)
        stats = sim.stats()
    assert stats.requests == 0


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_streamed_turn_with_tool_calls_is_assembled(client: Client) -> None:
    script = ToolCallReply([("get_weather", {"city": "Paris"})], content="Let me look.")
    async with Simulator(reply=lambda body: script, stream_pace=0.001) as sim:
        llm = LLMInference("llm", tools=[get_weather], run_tools=False).bind(
            resources=manager(sim, client)
        )
        stream = llm.stream("weather in Paris?")
        deltas = await asyncio.wait_for(collect(stream), GUARD)
        stats = sim.stats()
    assert "".join(deltas) == "Let me look."
    assert isinstance(stream.output, AssistantMessage)
    (call,) = stream.output.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert stats.streams_completed == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_server_that_ignores_stream_gives_its_whole_reply_as_one_delta(
    client: Client,
) -> None:
    seen: list[dict[str, Any]] = []

    async def whole_reply(request: web.Request) -> web.Response:
        seen.append(await request.json())
        message = {"role": "assistant", "content": REPLY}
        usage = {"prompt_tokens": 3, "completion_tokens": 9}
        body = {"model": "m", "choices": [{"message": message, "finish_reason": "stop"}]}
        return web.json_response({**body, "usage": usage})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", whole_reply)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base_url = str(server.make_url("/v1"))
        resources = ResourceManager({"llm": {"model": "m", "base_url": base_url, "client": client}})
        llm = LLMInference("llm").bind(resources=resources)
        deltas = await asyncio.wait_for(collect(llm.stream("hi")), GUARD)
    finally:
        await server.close()
    assert deltas == [REPLY]
    assert seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert resources.usage()["llm"].output_tokens == 9


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_task_timeout_mid_stream_is_final_not_retried(client: Client) -> None:
    # No two words alike: text shown twice (a retry after the first delta)
    # could not be a prefix of the reply.
    long_reply = " ".join(f"w{index}" for index in range(300))
    async with Simulator(reply=lambda body: long_reply, stream_pace=0.02) as sim:
        llm = LLMInference("llm").bind(resources=manager(sim, client), task_timeout=1.0)
        await asyncio.wait_for(llm("warm up"), GUARD)  # the first call opens the client
        deltas: list[str] = []

        async def consume() -> None:
            async for delta in llm.stream("go"):
                deltas.append(delta)

        with pytest.raises(StreamInterruptedError, match="TaskTimeoutError"):
            await asyncio.wait_for(consume(), GUARD)
        # Every attempt's stream was closed, and none ran to its end.
        await until(lambda: sim.stats().streams_aborted == sim.stats().streams)
        stats = sim.stats()
    assert deltas
    assert long_reply.startswith("".join(deltas))
    assert stats.streams_completed == 0


@pytest.mark.parametrize("client", CLIENTS)
async def test_per_call_options_travel_with_the_streamed_request(client: Client) -> None:
    bodies: list[dict[str, Any]] = []

    def record(body: dict[str, Any]) -> str:
        bodies.append(body)
        return REPLY

    async with Simulator(reply=record) as sim:
        llm = LLMInference("llm", temperature=0.7).bind(resources=manager(sim, client))
        deltas = await asyncio.wait_for(collect(llm.stream("hi", temperature=0, seed=3)), GUARD)
    assert "".join(deltas) == REPLY
    (body,) = bodies
    assert (body["temperature"], body["seed"], body["model"]) == (0, 3, "sim-model")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_huge_error_body_to_a_stream_request_is_capped(client: Client) -> None:
    async def huge_error(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500)
        response.content_type = "application/json"
        await response.prepare(request)
        for _ in range(64):  # 4 MiB, chunked: no Content-Length to refuse up front
            await response.write(b" " * 65536)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", huge_error)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        endpoint = {
            "model": "m",
            "base_url": str(server.make_url("/v1")),
            "client": client,
            "max_response_bytes": 100_000,
        }
        llm = LLMInference("llm").bind(resources=ResourceManager({"llm": endpoint}))
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes"):
            await asyncio.wait_for(collect(llm.stream("hi")), GUARD)
    finally:
        await server.close()
