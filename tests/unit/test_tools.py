"""Tools: schemas from signatures and docstrings, argument validation, running tool calls."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from enum import Enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from plait.clients.base import ChatResponse, RawToolCall
from plait.errors import ConfigError
from plait.graph import NodeKind
from plait.inference import LLMInference, ToolLoop
from plait.parameter import Parameter
from plait.storage.checkpoint_session import _models_of
from plait.storage.codec import decode, encode
from plait.storage.fingerprint import describe, differences
from plait.tools import AssistantMessage, Tool, ToolCall, as_tools, run_tool_calls
from plait.tracing import Tracer
from support.threads import PeakThreads


class Unit(Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(BaseModel):
    city: str
    country: str | None = None


def forecast(place: Place, when: date, unit: Unit = Unit.CELSIUS, hourly: bool = False) -> str:
    """Forecast the weather.

    Uses the national weather service.

    Args:
        place: where to forecast.
        when: the day, as YYYY-MM-DD.
        unit: the temperature unit; the model
            may pick either.
        hourly: one line per hour instead of a summary.

    Returns:
        The forecast text.
    """
    return f"{place.city} {when.isoformat()} {unit.value} {hourly}"


# --- schemas ----------------------------------------------------------------


def test_schema_comes_from_the_signature_and_docstring() -> None:
    tool = Tool(forecast)
    assert tool.name == "forecast"
    assert tool.description == "Forecast the weather."
    schema = tool.parameters
    assert schema["type"] == "object"
    assert schema["required"] == ["place", "when"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["when"]["format"] == "date"
    assert props["when"]["description"] == "the day, as YYYY-MM-DD."
    assert props["unit"]["description"] == "the temperature unit; the model may pick either."
    assert props["unit"]["default"] == "celsius"
    assert props["hourly"] == {
        "default": False,
        "description": "one line per hour instead of a summary.",
        "title": "Hourly",
        "type": "boolean",
    }
    assert "Place" in schema["$defs"]
    assert tool.schema() == {
        "type": "function",
        "function": {
            "name": "forecast",
            "description": "Forecast the weather.",
            "parameters": schema,
        },
    }


def test_name_and_description_can_be_given() -> None:
    def f(x: int) -> int:
        return x

    tool = Tool(f, name="double", description="Doubles a number.")
    assert (tool.name, tool.description) == ("double", "Doubles a number.")
    assert Tool(f).description == ""


def test_a_function_without_parameters() -> None:
    def now() -> str:
        """The time."""
        return "noon"

    assert Tool(now).parameters["properties"] == {}


def test_parameters_whose_names_shadow_model_attributes() -> None:
    def lookup(schema: str, json: int, model_config: bool) -> str:
        return f"{schema}{json}{model_config}"

    tool = Tool(lookup)
    assert set(tool.parameters["properties"]) == {"schema", "json", "model_config"}
    assert tool.validate({"schema": "s", "json": 1, "model_config": True}) == {
        "schema": "s",
        "json": 1,
        "model_config": True,
    }


def test_untyped_parameter_is_refused_by_name() -> None:
    def bad(city, days: int) -> str:  # type: ignore[no-untyped-def]
        return ""

    with pytest.raises(ConfigError, match=r"bad.*'city'.*type annotation"):
        Tool(bad)


def test_star_args_and_kwargs_are_refused() -> None:
    def spread(*cities: str) -> str:
        return ""

    def options(**extra: str) -> str:
        return ""

    with pytest.raises(ConfigError, match=r"spread.*\*cities"):
        Tool(spread)
    with pytest.raises(ConfigError, match=r"options.*\*\*extra"):
        Tool(options)


class Opaque:
    """A class pydantic has no schema for."""


def test_a_type_without_a_json_schema_is_refused_by_name() -> None:
    def use(thing: Opaque) -> str:
        return ""

    with pytest.raises(ConfigError, match=r"use.*'thing'.*Opaque.*no JSON schema"):
        Tool(use)


def test_a_type_that_cannot_be_resolved_is_refused_by_name() -> None:
    class Local:
        pass

    def use(count: int, thing: Local) -> str:
        return ""

    with pytest.raises(ConfigError, match=r"use.*'thing'.*cannot be resolved"):
        Tool(use)


def test_not_a_function_is_refused() -> None:
    with pytest.raises(ConfigError, match="callable"):
        Tool("get_weather")  # type: ignore[arg-type]


def test_duplicate_tool_names_are_refused() -> None:
    def a(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match=r"two tools named 'a'"):
        as_tools([a, Tool(a)])


def test_llm_inference_takes_plain_functions() -> None:
    llm = LLMInference("llm", tools=[forecast], tool_choice="auto", run_tools=False)
    request = llm.forward("hi")
    assert request.tools == [Tool(forecast).schema()]
    assert request.tool_choice == "auto"
    assert list(llm.tools) == ["forecast"]


def test_llm_inference_refuses_bad_tool_settings() -> None:
    with pytest.raises(ConfigError, match="tools"):
        LLMInference("llm", tools=forecast)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_tool_rounds"):
        LLMInference("llm", tools=[forecast], max_tool_rounds=0)
    with pytest.raises(ConfigError, match="tool_choice"):
        LLMInference("llm", tool_choice="required")


# --- validating arguments ---------------------------------------------------


def test_arguments_are_validated_into_the_functions_types() -> None:
    tool = Tool(forecast)
    args = tool.validate({"place": {"city": "Oslo"}, "when": "2024-05-01", "unit": "fahrenheit"})
    assert args == {
        "place": Place(city="Oslo"),
        "when": date(2024, 5, 1),
        "unit": Unit.FAHRENHEIT,
        "hourly": False,
    }


def test_reply_tool_calls_become_typed_tool_calls() -> None:
    llm = LLMInference("llm", tools=[forecast], run_tools=False)
    good_args = {"place": {"city": "Oslo"}, "when": "2024-05-01"}
    bad_args = {"place": {"city": "Oslo"}, "when": "soon"}
    raw = [
        RawToolCall("c1", "forecast", json.dumps(good_args), good_args),
        RawToolCall("c2", "forecast", json.dumps(bad_args), bad_args),
        RawToolCall("c3", "forecast", "[1, 2]", error="must be a JSON object, got list"),
    ]
    message = llm.parse_response(ChatResponse("", "m", tool_calls=raw))
    assert isinstance(message, AssistantMessage)
    good, bad_date, not_object = message.tool_calls
    assert good.arguments["when"] == date(2024, 5, 1)
    assert good.error is None
    assert bad_date.error is not None
    assert "when" in bad_date.error
    assert bad_date.arguments == {"place": {"city": "Oslo"}, "when": "soon"}
    assert not_object.error is not None
    assert "JSON object" in not_object.error


def test_a_reply_without_tool_calls_is_still_a_message() -> None:
    llm = LLMInference("llm", tools=[forecast])
    message = llm.parse_response(ChatResponse("It is sunny.", "m"))
    assert message == AssistantMessage(content="It is sunny.", tool_calls=[])


# --- running tool calls -----------------------------------------------------


async def test_sync_tools_run_concurrently_in_threads() -> None:
    threads: set[int] = set()

    def slow(x: int) -> str:
        threads.add(threading.get_ident())
        time.sleep(0.2)
        return str(x * 2)

    calls = [ToolCall(id=f"c{i}", name="slow", arguments={"x": i}) for i in range(4)]
    started = time.perf_counter()
    results = await run_tool_calls(calls, [slow])
    elapsed = time.perf_counter() - started
    assert elapsed < 0.6
    assert threading.get_ident() not in threads
    assert results == [
        {"role": "tool", "tool_call_id": f"c{i}", "content": str(i * 2)} for i in range(4)
    ]


async def test_the_thread_pool_bounds_sync_tools() -> None:
    threads = PeakThreads()

    def slow(x: int) -> int:
        threads.hold()
        return x

    calls = [ToolCall(id=f"c{i}", name="slow", arguments={"x": i}) for i in range(6)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = await run_tool_calls(calls, [slow], executor=pool)
    assert threads.peak == 2
    assert [result["content"] for result in results] == [str(i) for i in range(6)]


async def test_async_tools_run_as_tasks_and_results_keep_call_order() -> None:
    order: list[str] = []

    async def wait(name: str, seconds: float) -> dict[str, Any]:
        await asyncio.sleep(seconds)
        order.append(name)
        return {"name": name, "waited": seconds}

    calls = [
        ToolCall(id="a", name="wait", arguments={"name": "slow", "seconds": 0.1}),
        ToolCall(id="b", name="wait", arguments={"name": "fast", "seconds": 0.0}),
    ]
    started = time.perf_counter()
    results = await run_tool_calls(calls, [wait])
    assert time.perf_counter() - started < 0.2
    assert order == ["fast", "slow"]
    assert [result["tool_call_id"] for result in results] == ["a", "b"]
    assert results[0]["content"] == '{"name":"slow","waited":0.1}'


async def test_a_raising_tool_answers_with_its_error() -> None:
    def explode(city: str) -> str:
        raise RuntimeError(f"no data for {city}")

    async def explode_later(city: str) -> str:
        raise KeyError(city)

    calls = [
        ToolCall(id="a", name="explode", arguments={"city": "Oslo"}),
        ToolCall(id="b", name="explode_later", arguments={"city": "Lima"}),
    ]
    results = await run_tool_calls(calls, [explode, explode_later])
    assert results[0]["content"] == (
        "Error: the tool 'explode' raised RuntimeError: no data for Oslo"
    )
    assert results[1]["content"] == "Error: the tool 'explode_later' raised KeyError: 'Lima'"


async def test_invalid_arguments_answer_with_the_validation_error() -> None:
    ran: list[Any] = []

    def add(a: int, b: int) -> int:
        ran.append((a, b))
        return a + b

    calls = [
        ToolCall(id="a", name="add", arguments={"a": 1, "b": "two"}),
        ToolCall(id="b", name="add", arguments={"a": 1}),
        ToolCall(id="c", name="add", arguments={"a": 1, "b": 2, "c": 3}),
        ToolCall(id="d", name="nope", arguments={}),
        ToolCall(id="e", name="add", arguments={"a": "1", "b": 2}),
    ]
    results = await run_tool_calls(calls, [add])
    contents = [result["content"] for result in results]
    assert "'add'" in contents[0]
    assert "b" in contents[0]
    assert "integer" in contents[0]
    assert "b" in contents[1]
    assert "required" in contents[1].lower()
    assert "c" in contents[2]
    assert "not permitted" in contents[2].lower()
    assert "no tool named 'nope'" in contents[3]
    assert "add" in contents[3]
    assert all(content.startswith("Error: ") for content in contents[:4])
    assert contents[4] == "3"
    assert ran == [(1, 2)]


async def test_a_call_whose_arguments_did_not_parse_is_not_run() -> None:
    def add(a: int, b: int) -> int:
        raise AssertionError("must not run")

    call = ToolCall(id="a", name="add", arguments={}, raw_arguments="{", error="bad JSON")
    (result,) = await run_tool_calls([call], [add])
    assert result == {"role": "tool", "tool_call_id": "a", "content": "Error: bad JSON"}


async def test_tools_may_be_given_by_name() -> None:
    def echo(text: str) -> str:
        return text

    tools = as_tools([echo])
    (result,) = await run_tool_calls(
        [ToolCall(id="a", name="echo", arguments={"text": "hi"})], tools
    )
    assert result["content"] == "hi"


def test_positional_only_parameters_are_passed_by_position() -> None:
    def power(base: int, /, exponent: int = 2) -> int:
        return int(base**exponent)

    tool = Tool(power)
    assert asyncio.run(tool.run({"base": 3, "exponent": 3})) == 27


def test_tool_schema_for_literals() -> None:
    def pick(color: Literal["red", "blue"]) -> str:
        return color

    assert Tool(pick).parameters["properties"]["color"]["enum"] == ["red", "blue"]


def test_an_assistant_message_survives_a_checkpoint() -> None:
    def forecast(when: date) -> str:
        return str(when)

    call = ToolCall(id="c1", name="forecast", arguments={"when": date(2024, 5, 1)})
    message = AssistantMessage(content="", tool_calls=[call])
    # A checkpoint decodes only the classes its graph declares: a tool-using call
    # declares the message its output is.
    declared = _models_of(Tracer().trace(LLMInference("llm", tools=[forecast]), "x"))
    restored = decode(encode(message), declared)
    assert isinstance(restored, AssistantMessage)
    assert restored.tool_calls[0].arguments == {"when": "2024-05-01"}
    assert restored.to_message() == message.to_message()


def test_a_changed_tool_changes_the_fingerprint() -> None:
    def lookup(city: str) -> str:
        return city

    def lookup_v2(city: str, days: int) -> str:
        return city

    before = describe(Tracer().trace(LLMInference("llm", tools=[lookup]), "x"))
    after = describe(
        Tracer().trace(LLMInference("llm", tools=[Tool(lookup_v2, name="lookup")]), "x")
    )
    assert before != after
    assert any("tool_schemas" in line for line in differences(before, after))


def test_an_assistant_message_can_continue_a_conversation() -> None:
    call = ToolCall(id="c1", name="forecast", arguments={}, raw_arguments="{}")
    turn = AssistantMessage(content="Checking.", tool_calls=[call])
    request = LLMInference("llm", tools=[forecast], run_tools=False).forward(
        [
            {"role": "user", "content": "hi"},
            turn,
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    )
    assert request.messages[1] == turn.to_message()
    assert request.messages[2]["role"] == "tool"
    assert AssistantMessage(content="plain").to_message() == {
        "role": "assistant",
        "content": "plain",
    }


def test_tools_to_run_make_a_dynamic_loop_whose_turn_has_the_same_settings() -> None:
    prompt = Parameter("Use the tools.", description="system prompt of the agent")
    llm = LLMInference("llm", prompt, 0.3, 40, tools=[forecast], tool_choice="auto", seed=5)
    assert isinstance(llm, LLMInference)
    assert isinstance(llm, ToolLoop)
    assert llm._plait_node_kind is NodeKind.DYNAMIC
    turn = llm.turn
    assert type(turn) is LLMInference
    assert turn._plait_node_kind is NodeKind.LLM
    request = turn.forward("hi")
    assert request.tools == [Tool(forecast).schema()]
    assert (request.temperature, request.max_tokens, request.options) == (0.3, 40, {"seed": 5})
    assert request.tool_choice == "auto"
    assert request.messages[0] == {"role": "system", "content": "Use the tools."}
    # One parameter, named from the loop, so state_dict is the same as without tools.
    assert dict(llm.named_parameters()) == {"system_prompt": prompt}
    llm.temperature = 0
    assert turn.forward("hi").temperature == 0
    assert type(LLMInference("llm", tools=[forecast], run_tools=False)) is LLMInference
    assert type(LLMInference("llm", tools=[], run_tools=True)) is LLMInference


def test_run_tools_and_max_tool_rounds_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"run_tools must be True or False, got 'yes'"):
        LLMInference("llm", tools=[forecast], run_tools="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"max_tool_rounds must be a positive int, got True"):
        LLMInference("llm", tools=[forecast], max_tool_rounds=True)
    with pytest.raises(ConfigError, match=r"held no tools; pass a list"):
        LLMInference("llm", tools=iter([]))  # type: ignore[arg-type]


def test_a_tool_loop_survives_pickling() -> None:
    import pickle

    llm = LLMInference("llm", tools=[forecast, Tool(forecast, name="other", description="x")])
    clone = pickle.loads(pickle.dumps(llm))
    assert type(clone) is ToolLoop
    assert clone.tool_schemas == llm.tool_schemas
    assert clone.tools["other"].description == "x"
    assert clone.turn.forward("hi").tools == llm.turn.forward("hi").tools
    arguments = {"place": {"city": "Oslo"}, "when": "2024-05-01"}
    assert clone.tools["forecast"].validate(arguments)["when"] == date(2024, 5, 1)
