"""Scripted tool calls in a simulator of its own process, and tools in token estimates."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from plait import LLMInference
from plait.clients.base import ChatRequest
from plait.resources.tokens import estimate_tokens, message_tokens, prompt_tokens, text_tokens
from plait.testing import Simulator, ToolCallReply
from plait.testing._cli import build_parser, config_to_argv, options_from_args
from plait.testing._config import SimulatorConfig
from plait.tools import AssistantMessage, Tool


def get_weather(city: str, days: int = 1) -> str:
    """Look up the weather forecast for a city.

    Args:
        city: the city's name.
        days: how many days ahead.
    """
    return f"sunny in {city} for {days} day(s)"


def test_tool_call_rules_travel_as_flags() -> None:
    rules: list[tuple[str, str | ToolCallReply]] = [
        ("weather", ToolCallReply([("get_weather", {"city": "Paris"}), ("x", "{bad")], "Hm.")),
        ("hi", "hello"),
    ]
    config = SimulatorConfig(rules=rules)
    options = options_from_args(build_parser().parse_args(config_to_argv(config)))
    assert SimulatorConfig(**options) == config


@pytest.mark.parametrize(
    "reply",
    [{"tool_calls": "get_weather"}, {"tool_calls": [["get_weather"]]}, {"content": 3}],
)
def test_a_malformed_tool_call_rule_is_refused_with_its_shape(reply: dict[str, Any]) -> None:
    parser = build_parser()
    parser.error = _raise  # type: ignore[method-assign]
    with pytest.raises(argparse.ArgumentTypeError, match=r"tool_calls.*\[name, arguments\]"):
        parser.parse_args([f"--rules-json={json.dumps([['x', reply]])}"])


def _raise(message: str) -> None:
    raise argparse.ArgumentTypeError(message)


async def test_a_spawned_simulator_answers_with_scripted_tool_calls() -> None:
    script = ToolCallReply([("get_weather", {"city": "Oslo", "days": 2})])
    with Simulator.spawn(rules=[("weather", script)]) as sim:
        resources = {"llm": {"model": "m", "base_url": sim.base_url}}
        turn = LLMInference("llm", tools=[get_weather], run_tools=False).bind(resources=resources)
        message = await turn("weather in Oslo?")
        loop = LLMInference("llm", tools=[get_weather]).bind(resources=resources)
        answer = await loop("weather in Oslo?")
        assert sim.stats().requests == 3

    assert isinstance(message, AssistantMessage)
    (call,) = message.tool_calls
    assert (call.name, call.arguments, call.error) == (
        "get_weather",
        {"city": "Oslo", "days": 2},
        None,
    )
    assert answer == "ECHO: weather in Oslo?"


def test_the_token_estimate_counts_the_tools_and_the_calls_in_the_conversation() -> None:
    tools = [Tool(get_weather).schema()]
    question = [{"role": "user", "content": "Weather in Paris?"}]
    plain = ChatRequest(messages=question, max_tokens=10)
    with_tools = ChatRequest(messages=question, max_tokens=10, tools=tools)
    schema_tokens = text_tokens(json.dumps(tools, ensure_ascii=False))
    assert schema_tokens > 20
    assert estimate_tokens(with_tools) == estimate_tokens(plain) + schema_tokens
    arguments = '{"city": "Paris", "days": 3}'
    turn = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": arguments},
            }
        ],
    }
    assert message_tokens([turn]) == text_tokens("get_weather" + arguments)


async def test_the_simulator_reports_the_prompt_tokens_the_limiter_charged() -> None:
    seen: list[ChatRequest] = []
    async with Simulator() as sim:
        resources = {"llm": {"model": "m", "base_url": sim.base_url}}
        llm = LLMInference("llm", tools=[get_weather], run_tools=False).bind(resources=resources)
        seen.append(llm.forward("How is the weather in Paris today?"))
        await llm("How is the weather in Paris today?")
        reported = sim.stats().prompt_tokens

    (request,) = seen
    assert reported == prompt_tokens(request.messages, request.tools)
    assert reported > message_tokens(request.messages)
