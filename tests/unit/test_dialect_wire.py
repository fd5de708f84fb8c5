"""Structured-output dialects without a network: request bodies, refusals, settings, replies.

What goes over HTTP (fallback, memory, limits) is in
``tests/integration/test_structured_dialects.py``; these pin the pieces.
"""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel

from plait.clients._wire import build_body, error_for_status
from plait.clients.base import ChatRequest
from plait.clients.dialects import schema_instruction
from plait.clients.structured import response_format_payload, validate_reply
from plait.errors import (
    ConfigError,
    PermanentError,
    ResponseValidationError,
    StructuredOutputRejectedError,
    TransientError,
)
from plait.resources import EndpointConfig, ResourceConfig
from plait.testing._config import SimulatorConfig


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative"]


def request(
    messages: list[dict[str, str]], dialect: Literal["json_schema", "json_object", "prompt"]
) -> ChatRequest:
    return ChatRequest(messages=messages, response_format=Sentiment, structured_output=dialect)


SCHEMA = response_format_payload(Sentiment)["json_schema"]["schema"]
LLAMA_CPP_REFUSAL = json.dumps(
    {
        "error": {
            "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
            "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\"}",
            "type": "internal_server_error",
        }
    }
).encode()


def test_json_schema_is_openais_form() -> None:
    body = build_body(request([{"role": "user", "content": "hi"}], "json_schema"))
    assert body["response_format"] == response_format_payload(Sentiment)


def test_json_object_carries_the_same_schema_in_llama_cpp_pythons_form() -> None:
    body = build_body(request([{"role": "user", "content": "hi"}], "json_object"))
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_prompt_joins_the_schema_to_the_system_message_without_editing_the_request() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    sent = request(messages, "prompt")
    body = build_body(sent)
    assert "response_format" not in body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief.\n\n" + schema_instruction(Sentiment)},
        {"role": "user", "content": "hi"},
    ]
    assert json.dumps(SCHEMA) in schema_instruction(Sentiment)
    assert sent.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_prompt_puts_a_system_message_first_when_there_is_none() -> None:
    body = build_body(request([{"role": "user", "content": "hi"}], "prompt"))
    assert body["messages"] == [
        {"role": "system", "content": schema_instruction(Sentiment)},
        {"role": "user", "content": "hi"},
    ]


def error(message: str) -> bytes:
    return json.dumps({"error": {"message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, LLAMA_CPP_REFUSAL),
        (400, error("response_format.type: Input should be 'text' or 'json_object'")),
        (422, b'{"detail": [{"loc": ["body", "response_format"], "msg": "extra fields"}]}'),
        (400, error("'response_format' of type 'json_schema' is not supported with this model")),
    ],
)
def test_a_refusal_of_the_form_is_its_own_permanent_error(status: int, body: bytes) -> None:
    error = error_for_status(status, {}, body, None)
    assert type(error) is StructuredOutputRejectedError
    assert isinstance(error, PermanentError)
    assert error.status_code == status


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (500, b'{"error": {"message": "CUDA out of memory"}}', TransientError),
        (503, b'{"error": {"message": "response_format backend overloaded"}}', TransientError),
        (400, b'{"error": {"message": "max_tokens is too large"}}', PermanentError),
    ],
)
def test_errors_that_do_not_name_the_form_keep_their_class(
    status: int, body: bytes, kind: type[Exception]
) -> None:
    assert type(error_for_status(status, {}, body, None)) is kind


def test_structured_output_defaults_to_auto() -> None:
    assert EndpointConfig(model="m").structured_output == "auto"
    assert EndpointConfig(model="m", structured_output="prompt").structured_output == "prompt"


def test_an_unknown_dialect_is_refused_with_a_suggestion_and_the_servers() -> None:
    with pytest.raises(ConfigError) as caught:
        ResourceConfig({"fast": {"model": "m", "structured_output": "json-object"}})
    message = str(caught.value)
    assert "alias 'fast', field 'structured_output'" in message
    assert "did you mean 'json_object'?" in message
    assert "llama-cpp-python" in message


def test_a_reply_with_prose_around_its_object_is_read_as_that_object() -> None:
    reply = 'The {tone} is clear. {"sentiment": "negative"} Anything else?'
    assert validate_reply(reply, Sentiment) == Sentiment(sentiment="negative")


def test_the_embedded_object_must_validate_and_its_problem_is_named() -> None:
    with pytest.raises(ResponseValidationError, match="sentiment: Input should be"):
        validate_reply('Here: {"sentiment": "mixed"}', Sentiment)


def test_the_simulator_refuses_an_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="structured_dialect must be one of any, llama_cpp"):
        SimulatorConfig(structured_dialect="vllm")  # type: ignore[arg-type]
