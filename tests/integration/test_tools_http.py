"""Tools and per-call options over real HTTP: the simulator sees the wire, both clients read it.

Each test runs once per client, so the lean client and the SDK client are held
to the same tools array, the same tool-call parsing and the same per-call
request options.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from plait import LLMInference, Module
from plait.errors import ConfigError
from plait.testing import Simulator, ToolCallReply
from plait.tools import AssistantMessage, Tool, ToolCall, run_tool_calls

Client = Literal["lean", "openai"]
CLIENTS: list[Client] = ["lean", "openai"]


def get_weather(city: str, days: int = 1) -> str:
    """Look up the weather forecast for a city.

    Args:
        city: the city's name, e.g. "Paris".
        days: how many days ahead to forecast.
    """
    return f"sunny in {city} for {days} day(s)"


def local_time(city: str) -> str:
    """The current local time in a city."""
    return f"noon in {city}"


def resources(sim: Simulator, client: Client) -> dict[str, Any]:
    return {"llm": {"model": "sim-model", "base_url": sim.base_url, "client": client}}


class Recorder:
    """A reply callable that keeps every body the server saw and answers from a script."""

    def __init__(self, *answers: str | ToolCallReply) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._answers = list(answers)

    def __call__(self, body: dict[str, Any]) -> str | ToolCallReply:
        self.bodies.append(body)
        return self._answers.pop(0) if self._answers else "done"


@pytest.mark.parametrize("client", CLIENTS)
async def test_tool_round_trip_without_running_tools(client: Client) -> None:
    recorder = Recorder(ToolCallReply([("get_weather", {"city": "Paris", "days": 3})]))
    async with Simulator(reply=recorder) as sim:
        llm = LLMInference("llm", tools=[get_weather], run_tools=False)
        llm.bind(resources=resources(sim, client))
        message = await llm("What is the weather in Paris?")

    assert isinstance(message, AssistantMessage)
    assert message.content == ""
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.name == "get_weather"
    assert call.arguments == {"city": "Paris", "days": 3}
    assert isinstance(call.arguments["days"], int)
    assert call.error is None
    assert call.id
    (body,) = recorder.bodies
    (tool,) = body["tools"]
    assert tool["type"] == "function"
    function = tool["function"]
    assert function["name"] == "get_weather"
    assert function["description"] == "Look up the weather forecast for a city."
    schema = function["parameters"]
    assert schema["type"] == "object"
    assert schema["required"] == ["city"]
    assert schema["properties"]["city"]["type"] == "string"
    assert schema["properties"]["city"]["description"] == 'the city\'s name, e.g. "Paris".'
    assert schema["properties"]["days"]["type"] == "integer"
    assert schema["properties"]["days"]["default"] == 1
    assert "tool_choice" not in body


@pytest.mark.parametrize("client", CLIENTS)
async def test_two_parallel_tool_calls_are_parsed_in_order(client: Client) -> None:
    calls = ToolCallReply(
        [("local_time", {"city": "Oslo"}), ("get_weather", {"city": "Lima"})],
        content="Let me look.",
    )
    recorder = Recorder(calls)
    async with Simulator(reply=recorder) as sim:
        llm = LLMInference(
            "llm", tools=[get_weather, local_time], tool_choice="required", run_tools=False
        )
        llm.bind(resources=resources(sim, client))
        message = await llm("time in Oslo, weather in Lima")

    assert message.content == "Let me look."
    assert [call.name for call in message.tool_calls] == ["local_time", "get_weather"]
    assert [call.arguments for call in message.tool_calls] == [
        {"city": "Oslo"},
        {"city": "Lima", "days": 1},
    ]
    assert len({call.id for call in message.tool_calls}) == 2
    assert recorder.bodies[0]["tool_choice"] == "required"
    assert [tool["function"]["name"] for tool in recorder.bodies[0]["tools"]] == [
        "get_weather",
        "local_time",
    ]


@pytest.mark.parametrize("client", CLIENTS)
async def test_bad_tool_calls_are_surfaced_on_the_call(client: Client) -> None:
    script = ToolCallReply(
        [
            ("get_weather", '{"city": "Paris", "days": '),
            ("get_weather", {"city": "Rome", "days": "many"}),
            ("launch_rockets", {}),
        ]
    )
    async with Simulator(reply=Recorder(script)) as sim:
        llm = LLMInference("llm", tools=[get_weather], run_tools=False)
        llm.bind(resources=resources(sim, client))
        message = await llm("weather please")

    broken, wrong_type, unknown = message.tool_calls
    assert broken.error is not None
    assert "get_weather" in broken.error
    assert "not valid JSON" in broken.error
    assert broken.raw_arguments == '{"city": "Paris", "days": '
    assert wrong_type.error is not None
    assert "days" in wrong_type.error
    assert "integer" in wrong_type.error
    assert unknown.error is not None
    assert "launch_rockets" in unknown.error
    assert "get_weather" in unknown.error
    results = await run_tool_calls(message.tool_calls, [Tool(get_weather)])
    assert [result["tool_call_id"] for result in results] == [
        call.id for call in message.tool_calls
    ]
    assert all(result["content"].startswith("Error: ") for result in results)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_conversation_with_tool_results_gets_a_plain_answer(client: Client) -> None:
    rules: list[tuple[str, str | ToolCallReply]] = [
        ("weather", ToolCallReply([("get_weather", {"city": "Paris"})])),
    ]
    async with Simulator(rules=rules) as sim:
        llm = LLMInference("llm", tools=[get_weather], run_tools=False)
        llm.bind(resources=resources(sim, client))
        question = [{"role": "user", "content": "What is the weather in Paris?"}]
        # Passed by keyword: a bare list is still read as a batch by Module.__call__.
        first = await llm(prompt=question)
        assert [call.name for call in first.tool_calls] == ["get_weather"]
        results = await run_tool_calls(first.tool_calls, [Tool(get_weather)])
        assert results == [
            {
                "role": "tool",
                "tool_call_id": first.tool_calls[0].id,
                "content": "sunny in Paris for 1 day(s)",
            }
        ]
        second = await llm(prompt=[*question, first.to_message(), *results])

    assert second.tool_calls == []
    assert second.content == "ECHO: What is the weather in Paris?"


@pytest.mark.parametrize("client", CLIENTS)
async def test_per_call_overrides_reach_the_wire(client: Client) -> None:
    async with Simulator(reply=json.dumps) as sim:
        llm = LLMInference("llm", temperature=0.9, seed=1)
        llm.bind(resources=resources(sim, client))
        text = await llm("hello", temperature=0, max_tokens=50, stop=["\n"], seed=7, top_p=0.5)
        plain = await llm("hello")

    seen = json.loads(text)
    assert (seen["temperature"], seen["max_tokens"]) == (0, 50)
    assert (seen["stop"], seen["seed"], seen["top_p"]) == (["\n"], 7, 0.5)
    default = json.loads(plain)
    assert (default["temperature"], default["seed"]) == (0.9, 1)
    assert "max_tokens" not in default
    assert "top_p" not in default


@pytest.mark.parametrize("client", CLIENTS)
async def test_per_call_overrides_in_a_traced_pipeline(client: Client) -> None:
    class Pipeline(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("llm")

        def forward(self, text: str) -> Any:
            return self.llm(text, temperature=0, stop=["END"])

    async with Simulator(reply=json.dumps) as sim:
        pipeline = Pipeline().bind(resources=resources(sim, client))
        seen = json.loads(await pipeline("hi"))

    assert (seen["temperature"], seen["stop"]) == (0, ["END"])


async def test_refused_overrides_send_nothing() -> None:
    async with Simulator() as sim:
        llm = LLMInference("llm").bind(resources=resources(sim, "lean"))
        with pytest.raises(ConfigError, match=r"temprature.*LLMInference\('llm'\)"):
            await llm("hi", temprature=0)
        with pytest.raises(ConfigError, match=r"'n'.*one reply"):
            await llm("hi", n=3)
        with pytest.raises(ConfigError, match=r"'stop'.*JSON"):
            await llm("hi", stop={"a", "b"})
        with pytest.raises(ConfigError, match=r"'temperature'"):
            await llm("hi", temperature=-1)
        assert sim.stats().requests == 0


def test_tool_call_and_message_are_plain_data() -> None:
    call = ToolCall(id="c1", name="get_weather", arguments={"city": "Paris"})
    message = AssistantMessage(content="", tool_calls=[call])
    assert message.to_message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
