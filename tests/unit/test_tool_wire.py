"""Tools on the wire: the request body carries them, the reply's tool calls are read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from plait.clients import ChatRequest
from plait.clients._wire import build_body, decode_reply
from plait.clients.base import RawToolCall
from plait.errors import TransientError

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


class Answer(BaseModel):
    title: str


def reply(message: dict[str, Any], finish_reason: str = "tool_calls") -> bytes:
    data = {
        "model": "m-1",
        "choices": [{"message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
    return json.dumps(data).encode()


def call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_tools_and_tool_choice_are_in_the_body() -> None:
    request = ChatRequest(messages=MESSAGES, model="m", tools=TOOLS, tool_choice="required")
    body = build_body(request)
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == "required"
    plain = build_body(ChatRequest(messages=MESSAGES, model="m"))
    assert "tools" not in plain
    assert "tool_choice" not in plain


def test_options_cannot_replace_the_tools() -> None:
    request = ChatRequest(messages=MESSAGES, model="m", tools=TOOLS, options={"tools": []})
    assert build_body(request)["tools"] == TOOLS


def test_null_content_with_tool_calls_is_an_answer() -> None:
    raw = reply(
        {
            "content": None,
            "tool_calls": [call("f", '{"x": 1}'), call("g", "{}", "call_2")],
        }
    )
    response = decode_reply(raw, None)
    assert response.content == ""
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == [
        RawToolCall("call_1", "f", '{"x": 1}', {"x": 1}),
        RawToolCall("call_2", "g", "{}", {}),
    ]


def test_arguments_that_are_not_json_keep_the_raw_text_and_the_reason() -> None:
    response = decode_reply(reply({"content": None, "tool_calls": [call("f", '{"x": ')]}), None)
    (tool_call,) = response.tool_calls
    assert tool_call.arguments == '{"x": '
    assert tool_call.parsed is None
    assert tool_call.error is not None
    assert "not valid JSON" in tool_call.error


def test_arguments_that_are_not_an_object_are_an_error_on_the_call() -> None:
    response = decode_reply(reply({"content": None, "tool_calls": [call("f", "[1]")]}), None)
    (tool_call,) = response.tool_calls
    assert tool_call.parsed is None
    assert tool_call.error is not None
    assert "JSON object" in tool_call.error


def test_arguments_sent_as_an_object_are_accepted() -> None:
    response = decode_reply(reply({"content": None, "tool_calls": [call("f", {"x": 2})]}), None)
    assert response.tool_calls[0].parsed == {"x": 2}
    assert response.tool_calls[0].arguments == '{"x": 2}'


def test_empty_arguments_mean_no_arguments() -> None:
    response = decode_reply(reply({"content": None, "tool_calls": [call("f", "")]}), None)
    assert response.tool_calls[0].parsed == {}


@pytest.mark.parametrize(
    ("tool_calls", "problem"),
    [
        ("call", "'tool_calls' is not a list"),
        (["x"], "tool call 0"),
        ([{"id": "c", "type": "function", "function": {"arguments": "{}"}}], "no function name"),
        ([{"id": "c", "type": "function"}], "no function name"),
    ],
)
def test_malformed_tool_calls_are_transient(tool_calls: Any, problem: str) -> None:
    with pytest.raises(TransientError, match=problem):
        decode_reply(reply({"content": None, "tool_calls": tool_calls}), None)


def test_null_content_without_tool_calls_stays_transient() -> None:
    with pytest.raises(TransientError, match="no tool calls"):
        decode_reply(reply({"content": None, "tool_calls": []}, "stop"), None)


def test_tool_calls_answer_a_structured_request_without_validating_it() -> None:
    response = decode_reply(reply({"content": None, "tool_calls": [call("f", "{}")]}), Answer)
    assert response.parsed is None
    assert len(response.tool_calls) == 1


def test_a_plain_reply_has_no_tool_calls() -> None:
    response = decode_reply(reply({"content": "hello"}, "stop"), None)
    assert response.tool_calls == []
