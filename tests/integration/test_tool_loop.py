"""The model/tool loop (``run_tools=True``) over real HTTP against the simulator.

The simulator plays the model: it asks for tools, and once the tools have
answered it replies with text. Every test reads what the server saw, so the
conversation the loop sent back (the assistant turn, then one tool message per
call, in call order) is checked on the wire.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any, Literal

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from plait import LLMInference, Module
from plait.errors import ToolRoundsError
from plait.testing import Simulator, ToolCallReply
from support.threads import PeakThreads

Client = Literal["lean", "openai"]
CLIENTS: list[Client] = ["lean", "openai"]
GUARD = 10.0


def resources(sim: Simulator, client: Client = "lean", **extra: Any) -> dict[str, Any]:
    return {"llm": {"model": "sim-model", "base_url": sim.base_url, "client": client, **extra}}


def get_weather(city: str, days: int = 1) -> str:
    """Look up the weather forecast for a city.

    Args:
        city: the city's name.
        days: how many days ahead.
    """
    return f"sunny in {city} for {days} day(s)"


class Script:
    """A reply callable: the model's turns, one per request, and every body the server saw."""

    def __init__(self, *turns: str | ToolCallReply) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._turns = list(turns)

    def __call__(self, body: dict[str, Any]) -> str | ToolCallReply:
        self.bodies.append(body)
        return self._turns.pop(0) if self._turns else "done"


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [message for message in body["messages"] if message["role"] == "tool"]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_tool_round_trip_answers_the_model_and_returns_its_final_text(
    client: Client,
) -> None:
    script = Script(ToolCallReply([("get_weather", {"city": "Paris", "days": 2})]), "Pack light.")
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", system_prompt="Be brief.", tools=[get_weather])
        llm.bind(resources=resources(sim, client))
        answer = await llm("Weather in Paris?")

    assert answer == "Pack light."
    first, second = script.bodies
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    turn = second["messages"][2]
    (call,) = turn["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}
    assert tool_messages(second) == [
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny in Paris for 2 day(s)"}
    ]
    assert second["tools"] == first["tools"]


async def test_two_calls_of_one_turn_run_concurrently_and_are_answered_in_call_order() -> None:
    both_running = threading.Barrier(2, timeout=GUARD)
    finished: list[str] = []

    def slow(x: str) -> str:
        """Waits for its twin, then takes a while: it finishes last."""
        both_running.wait()
        time.sleep(0.2)
        finished.append(threading.current_thread().name.split("_")[0])
        return f"slow:{x}"

    async def quick(x: str) -> str:
        """Waits (off the loop) for its twin, then answers at once."""
        await asyncio.to_thread(both_running.wait)
        finished.append("quick")
        return f"quick:{x}"

    script = Script(ToolCallReply([("slow", {"x": "a"}), ("quick", {"x": "b"})]), "ok")
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[slow, quick]).bind(resources=resources(sim))
        assert await llm("go") == "ok"

    # Neither could pass the barrier alone, so they ran at the same time;
    # the slow one finished last but is answered first, as it was called first.
    assert finished == ["quick", "plait-tool"]  # the sync tool ran on plait's pool
    calls = script.bodies[1]["messages"][1]["tool_calls"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages(script.bodies[1])] == [
        (calls[0]["id"], "slow:a"),
        (calls[1]["id"], "quick:b"),
    ]


async def test_twenty_tool_loops_in_a_batch_each_get_their_own_results() -> None:
    runs: list[str] = []

    def lookup(key: str) -> str:
        """Look a key up."""
        runs.append(key)
        return f"value of {key}"

    def model(body: dict[str, Any]) -> str | ToolCallReply:
        messages = body["messages"]
        tools = [m for m in messages if m["role"] == "tool"]
        if tools:
            return f"answer: {tools[0]['content']}"
        key = re.search(r"key (\d+)", messages[-1]["content"])
        assert key is not None
        return ToolCallReply([("lookup", {"key": key.group(1)})])

    async with Simulator(reply=model, latency=0.02) as sim:
        llm = LLMInference("llm", tools=[lookup]).bind(resources=resources(sim, max_concurrent=8))
        outputs = await llm([f"what is key {i}?" for i in range(20)])
        assert sim.stats().requests == 40

    assert outputs == [f"answer: value of {i}" for i in range(20)]
    assert sorted(runs, key=int) == [str(i) for i in range(20)]


@pytest.mark.parametrize("client", CLIENTS)
async def test_bad_tool_calls_are_answered_with_their_error_and_the_loop_goes_on(
    client: Client,
) -> None:
    def explode(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(f"boom: {reason}")

    script = Script(
        ToolCallReply(
            [
                ("get_weather", '{"city": "Paris", "days": '),
                ("get_weather", {"city": "Rome", "days": "many"}),
                ("launch_rockets", {"count": 3}),
                ("explode", {"reason": "test"}),
                ("get_weather", {"city": "Oslo"}),
            ]
        ),
        "Sorry, only Oslo worked.",
    )
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[get_weather, explode])
        llm.bind(resources=resources(sim, client))
        assert await llm("weather please") == "Sorry, only Oslo worked."

    answers = [m["content"] for m in tool_messages(script.bodies[1])]
    assert len(answers) == 5
    broken, wrong_type, unknown, raised, good = answers
    assert broken.startswith("Error: ")
    assert "not valid JSON" in broken
    assert wrong_type.startswith("Error: ")
    assert "days" in wrong_type
    assert "integer" in wrong_type
    assert unknown.startswith("Error: ")
    assert "'launch_rockets'" in unknown
    assert "'get_weather', 'explode'" in unknown
    assert raised == "Error: the tool 'explode' raised RuntimeError: boom: test"
    assert good == "sunny in Oslo for 1 day(s)"


async def test_a_model_that_never_stops_calling_tools_fails_after_max_tool_rounds() -> None:
    def model(body: dict[str, Any]) -> ToolCallReply:
        return ToolCallReply([("get_weather", {"city": "Paris"})])

    async with Simulator(reply=model) as sim:
        llm = LLMInference("llm", tools=[get_weather], max_tool_rounds=3)
        llm.bind(resources=resources(sim))
        with pytest.raises(ToolRoundsError, match=r"LLMInference\('llm'\).*'get_weather'.*=3"):
            await llm("loop forever")
        # Three rounds of tools, then the fourth turn still asks for one.
        assert sim.stats().requests == 4


class Forecast(BaseModel):
    city: str
    sunny: bool


async def test_the_output_is_the_response_format_model_after_the_tools() -> None:
    script = Script(
        ToolCallReply([("get_weather", {"city": "Lima"})]), '{"city": "Lima", "sunny": true}'
    )
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[get_weather], response_format=Forecast)
        llm.bind(resources=resources(sim))
        assert await llm("Lima?") == Forecast(city="Lima", sunny=True)

    assert all(body["response_format"]["type"] == "json_schema" for body in script.bodies)


async def test_per_call_overrides_go_into_every_turn_of_the_loop() -> None:
    script = Script(ToolCallReply([("get_weather", {"city": "Paris"})]), "fine")
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[get_weather], temperature=0.9)
        llm.bind(resources=resources(sim))
        assert await llm("hi", temperature=0, stop=["END"], seed=4) == "fine"

    assert len(script.bodies) == 2
    for body in script.bodies:
        assert (body["temperature"], body["stop"], body["seed"]) == (0, ["END"], 4)


async def test_a_tool_loop_inside_a_dynamic_and_a_traced_module() -> None:
    class Agent(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("llm", tools=[get_weather])

        async def forward(self, city: str) -> str:
            first = await self.llm(f"weather in {city}")
            return f"{city}: {first}"

    class Pipeline(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("llm", tools=[get_weather])

        def forward(self, city: str) -> Any:
            return self.llm(f"weather in {city}")

    rules: list[tuple[str, str | ToolCallReply]] = [
        ("weather in Rome", ToolCallReply([("get_weather", {"city": "Rome"})])),
    ]
    async with Simulator(rules=rules) as sim:
        dynamic = await Agent().bind(resources=resources(sim))("Rome")
        traced = await Pipeline().bind(resources=resources(sim))("Rome")
        assert sim.stats().requests == 4

    assert dynamic == "Rome: ECHO: weather in Rome"
    assert traced == "ECHO: weather in Rome"


async def test_tool_runs_have_execute_tool_spans_under_the_loop_without_arguments() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    secret = "hunter2-tool-argument"
    script = Script(
        ToolCallReply([("get_weather", {"city": secret}), ("get_weather", {"city": "Oslo"})]),
        "done",
    )
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[get_weather])
        llm.bind(resources=resources(sim), tracer_provider=provider)
        assert await llm("weather") == "done"

    spans = exporter.get_finished_spans()
    tools = [span for span in spans if span.name == "execute_tool get_weather"]
    assert len(tools) == 2
    chats = [span for span in spans if span.name.startswith("chat")]
    assert len(chats) == 2
    (loop,) = [span for span in spans if span.name.startswith("plait.node")]
    for span in [*tools, *chats]:
        assert span.parent is not None
        assert span.parent.span_id == loop.context.span_id
    for span in tools:
        attributes = dict(span.attributes or {})
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert attributes["gen_ai.tool.name"] == "get_weather"
    assert [dict(span.attributes or {})["plait.node_id"] for span in tools] == [
        "toolloop.tool_get_weather#1",
        "toolloop.tool_get_weather#2",
    ]
    dumped = json.dumps([dict(span.attributes or {}) for span in spans])
    assert secret not in dumped


async def test_tool_runs_are_slices_of_the_profile(tmp_path: Path) -> None:
    from plait.profiling.profile import last_profile

    script = Script(ToolCallReply([("get_weather", {"city": "Oslo"})]), "done")
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[get_weather])
        llm.bind(resources=resources(sim), profile=True, profile_path=tmp_path / "p.json")
        assert await llm("weather") == "done"

    profile = last_profile()
    assert profile is not None
    labels = {timing.label: timing for timing in profile.nodes}
    tool = labels["toolloop.tool_get_weather#1"]
    assert tool.kind == "dynamic"
    assert tool.parent == "toolloop"
    assert {"toolloop.turn#0", "toolloop.turn#2"} <= set(labels)


async def test_feedback_on_a_tool_loop_reaches_its_system_prompt_with_the_calls_shown() -> None:
    from plait import Parameter
    from plait.backward_prompt import HEADER
    from plait.optimization import VerifierLoss

    backward_prompts: list[str] = []

    def model(body: dict[str, Any]) -> str | ToolCallReply:
        messages = body["messages"]
        last = str(messages[-1]["content"])
        if last.startswith(HEADER):
            backward_prompts.append(last)
            items = re.findall(r'<FEEDBACK item="([^"]+)">\.\.\.</FEEDBACK>', last)
            return "".join(f'<FEEDBACK item="{i}">say more about {i}</FEEDBACK>' for i in items)
        if not any(m["role"] == "tool" for m in messages):
            return ToolCallReply([("get_weather", {"city": "Paris"})])
        return "It is sunny."

    async with Simulator(reply=model) as sim:
        endpoint = {"model": "sim", "base_url": sim.base_url}
        style = Parameter("Use the tools.", description="how the agent works")
        llm = LLMInference("llm", system_prompt=style, tools=[get_weather])
        llm.bind(resources={"llm": endpoint, "optimizer": endpoint}).train()
        output = await llm("weather in Paris")
        loss = await VerifierLoss(lambda out, target: "too short")(output)
        await loss.backward()

    assert output.payload == "It is sunny."
    assert style.feedback == ("say more about p1",)
    (prompt,) = backward_prompts
    assert '[assistant] (calls get_weather({"city": "Paris"}))' in prompt
    assert "[tool] sunny in Paris for 1 day(s)" in prompt
    assert "<REPLY>\nIt is sunny.\n</REPLY>" in prompt


async def test_a_tool_cut_short_by_task_timeout_is_answered_with_the_timeout() -> None:
    async def stuck(x: str) -> str:
        """Never answers in time."""
        await asyncio.sleep(GUARD)
        return x

    script = Script(ToolCallReply([("stuck", {"x": "a"}), ("get_weather", {"city": "Rome"})]), "ok")
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[stuck, get_weather])
        llm.bind(resources=resources(sim), task_timeout=0.5)
        assert await llm("go") == "ok"

    timed_out, weather = (m["content"] for m in tool_messages(script.bodies[1]))
    assert timed_out.startswith("Error: the tool 'stuck' did not finish in time")
    assert "task_timeout=0.5" in timed_out
    assert weather == "sunny in Rome for 1 day(s)"


class Place(BaseModel):
    city: str
    country: str = "FR"


async def test_a_tool_gets_its_arguments_in_its_own_types() -> None:
    received: list[tuple[Any, Any]] = []

    def plan(place: Place, when: date) -> str:
        """Plan a trip."""
        received.append((place, when))
        return f"{place.city} on {when:%d %B}"

    script = Script(
        ToolCallReply([("plan", {"place": {"city": "Nice"}, "when": "2026-07-14"})]), "ok"
    )
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[plan]).bind(resources=resources(sim))
        assert await llm("plan it") == "ok"

    assert received == [(Place(city="Nice"), date(2026, 7, 14))]
    assert tool_messages(script.bodies[1])[0]["content"] == "Nice on 14 July"


async def test_an_unknown_alias_in_a_tool_loop_fails_before_any_request() -> None:
    from plait.errors import UnknownAliasError

    async with Simulator() as sim:
        llm = LLMInference("nope", tools=[get_weather]).bind(resources=resources(sim))
        with pytest.raises(UnknownAliasError, match="nope"):
            await llm("hi")
        assert sim.stats().requests == 0


async def test_sync_tools_share_a_bounded_pool_of_threads() -> None:
    from plait.tool_loop import TOOL_THREADS

    threads = PeakThreads()

    def busy(n: int) -> str:
        """Hold a thread for a moment."""
        threads.hold()
        return str(n)

    calls = TOOL_THREADS + 8
    script = Script(ToolCallReply([("busy", {"n": n}) for n in range(calls)]), "ok")
    async with Simulator(reply=script) as sim:
        llm = LLMInference("llm", tools=[busy]).bind(resources=resources(sim))
        assert await llm("go") == "ok"

    assert [m["content"] for m in tool_messages(script.bodies[1])] == [str(n) for n in range(calls)]
    assert 1 < threads.peak <= TOOL_THREADS
