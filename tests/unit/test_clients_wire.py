"""The shared wire format: request bodies, reply reading, error mapping, structured outputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import BaseModel

from plait.clients import ChatRequest
from plait.clients._wire import (
    build_body,
    decode_reply,
    encode_body,
    error_for_status,
    retry_after_seconds,
    transport_error,
)
from plait.clients.structured import response_format_payload, validate_reply
from plait.errors import (
    PermanentError,
    QuotaExceededError,
    RateLimitError,
    ResponseValidationError,
    TransientError,
)

MESSAGES = [{"role": "user", "content": "hi"}]


class Inner(BaseModel):
    score: int


class Answer(BaseModel):
    title: str
    inner: Inner
    note: str | None = None


class WithDefault(BaseModel):
    title: str
    count: int = 3


def reply(content: str | None = "hello", **extra: object) -> bytes:
    data: dict[str, object] = {
        "model": "m-1",
        "choices": [
            {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
    data.update(extra)
    return json.dumps(data).encode()


# --- request bodies ---------------------------------------------------------


def test_body_has_model_and_messages_and_omits_unset_fields() -> None:
    body = build_body(ChatRequest(messages=MESSAGES, model="gpt-x"))
    assert body == {"model": "gpt-x", "messages": MESSAGES}


def test_body_sends_temperature_and_max_tokens_when_set() -> None:
    body = build_body(ChatRequest(messages=MESSAGES, model="m", temperature=0.0, max_tokens=5))
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 5


def test_body_merges_options_but_named_fields_win() -> None:
    request = ChatRequest(
        messages=MESSAGES,
        model="m",
        temperature=0.5,
        options={"top_p": 0.9, "seed": 1, "stop": ["\n"], "model": "other", "temperature": 2},
    )
    body = build_body(request)
    assert body["top_p"] == 0.9
    assert body["seed"] == 1
    assert body["stop"] == ["\n"]
    assert body["model"] == "m"
    assert body["temperature"] == 0.5
    assert request.options["model"] == "other", "the request's options must not be mutated"


def test_body_carries_response_format_payload() -> None:
    body = build_body(ChatRequest(messages=MESSAGES, model="m", response_format=Answer))
    assert body["response_format"] == response_format_payload(Answer)


def test_encoded_body_is_the_json_of_the_body() -> None:
    request = ChatRequest(messages=MESSAGES, model="m", max_tokens=9, options={"seed": 4})
    assert json.loads(encode_body(request)) == build_body(request)


# --- reading replies --------------------------------------------------------


def test_reply_fields_are_read() -> None:
    response = decode_reply(reply(), None)
    assert response.content == "hello"
    assert response.model == "m-1"
    assert response.finish_reason == "stop"
    assert (response.input_tokens, response.output_tokens) == (7, 3)
    assert response.parsed is None


def test_null_content_is_transient_and_missing_usage_counts_zero() -> None:
    raw = json.dumps({"model": "m", "choices": [{"message": {"content": ""}}]}).encode()
    response = decode_reply(raw, None)
    assert response.content == ""
    assert (response.input_tokens, response.output_tokens) == (0, 0)
    assert response.finish_reason is None
    null = json.dumps({"model": "m", "choices": [{"message": {"content": None}}]}).encode()
    with pytest.raises(TransientError, match="content is null and it has no tool calls"):
        decode_reply(null, None)


@pytest.mark.parametrize(
    "raw",
    [b'{"choices": [{', b"<html>bad gateway</html>", b"", b'{"choices": []}', b'{"id": "x"}'],
)
def test_malformed_reply_is_transient(raw: bytes) -> None:
    with pytest.raises(TransientError, match="malformed reply"):
        decode_reply(raw, None)


def test_structured_reply_is_parsed() -> None:
    response = decode_reply(reply('{"title": "t", "inner": {"score": 2}}'), Answer)
    assert response.parsed == Answer(title="t", inner=Inner(score=2))


def test_refusal_is_reported_as_a_validation_error() -> None:
    raw = json.dumps(
        {"model": "m", "choices": [{"message": {"content": None, "refusal": "I cannot"}}]}
    ).encode()
    with pytest.raises(ResponseValidationError, match="refused to produce Answer: I cannot"):
        decode_reply(raw, Answer)


# --- error mapping ----------------------------------------------------------


def test_429_prefers_retry_after_ms() -> None:
    error = error_for_status(429, {"retry-after-ms": "1500", "Retry-After": "9"}, b"", None)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == pytest.approx(1.5)
    assert error.status_code == 429


def test_429_reads_retry_after_seconds_case_insensitively() -> None:
    error = error_for_status(429, {"Retry-After": "2"}, b"slow down", None)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 2.0
    assert "429" in str(error)
    assert "slow down" in str(error)


def test_429_reads_retry_after_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    delay = retry_after_seconds({"retry-after": when})
    assert delay is not None
    assert 25 <= delay <= 30


def test_429_without_usable_header_has_no_retry_after() -> None:
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after-ms": "nan", "retry-after": "4"}) == 4.0
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    error = error_for_status(429, {}, None, None)
    assert isinstance(error, RateLimitError)
    assert error.retry_after is None


@pytest.mark.parametrize("field", ["code", "type"])
def test_429_insufficient_quota_is_permanent(field: str) -> None:
    body = json.dumps(
        {"error": {"message": "You exceeded your current quota", field: "insufficient_quota"}}
    )
    error = error_for_status(429, {"Retry-After": "1"}, body.encode(), None)
    assert isinstance(error, QuotaExceededError)
    assert isinstance(error, PermanentError)
    assert not isinstance(error, RateLimitError)
    assert error.status_code == 429
    assert "insufficient_quota" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "insufficient_quota mentioned", "code": "rate_limit_exceeded"}}',
        b"insufficient_quota",
        b'{"error": "insufficient_quota"}',
        b"[1]",
    ],
)
def test_429_that_only_mentions_quota_stays_a_rate_limit(body: bytes) -> None:
    assert type(error_for_status(429, {}, body, None)) is RateLimitError


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504])
def test_retryable_statuses_are_transient(status: int) -> None:
    error = error_for_status(status, {}, b"", None)
    assert type(error) is TransientError
    assert error.status_code == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_permanent_with_the_server_message(status: int) -> None:
    body = json.dumps({"error": {"message": "model not found", "type": "invalid"}}).encode()
    error = error_for_status(status, {}, body, None)
    assert type(error) is PermanentError
    assert str(error) == f"HTTP {status}: model not found"


def test_error_message_never_contains_the_key() -> None:
    body = b'{"error": {"message": "Incorrect API key provided: sk-secret-123"}}'
    error = error_for_status(401, {}, body, "sk-secret-123")
    assert "sk-secret-123" not in str(error)
    assert "Incorrect API key provided: ***" in str(error)


def test_long_plain_text_error_body_is_clipped() -> None:
    error = error_for_status(400, {}, b"x" * 5000, None)
    assert len(str(error)) < 600


def test_transport_errors_are_transient() -> None:
    assert "timed out" in str(transport_error(TimeoutError(), "http://h/v1/chat/completions"))
    error = transport_error(ConnectionResetError("peer reset"), "http://h/v1/chat/completions")
    assert isinstance(error, TransientError)
    assert "ConnectionResetError: peer reset" in str(error)


# --- structured outputs -----------------------------------------------------


def test_payload_shape_and_strict_schema() -> None:
    payload = response_format_payload(Answer)
    assert payload["type"] == "json_schema"
    spec = payload["json_schema"]
    assert spec["name"] == "Answer"
    assert spec["strict"] is True
    schema = spec["schema"]
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == ["inner", "note", "title"]
    assert "default" not in schema["properties"]["note"]
    assert schema["$defs"]["Inner"]["additionalProperties"] is False


def test_payload_keeps_fields_with_real_defaults_optional_and_not_strict() -> None:
    spec = response_format_payload(WithDefault)["json_schema"]
    assert spec["strict"] is False
    assert spec["schema"]["required"] == ["title"]
    assert WithDefault.model_validate_json('{"title": "t"}').count == 3


def test_payload_with_free_form_mapping_is_not_strict() -> None:
    class Tally(BaseModel):
        counts: dict[str, int]

    assert response_format_payload(Tally)["json_schema"]["strict"] is False


def test_payload_is_a_fresh_copy() -> None:
    first = response_format_payload(Answer)
    first["json_schema"]["schema"]["properties"].clear()
    assert response_format_payload(Answer)["json_schema"]["schema"]["properties"]


def test_strict_schema_still_accepts_what_the_model_accepts() -> None:
    assert validate_reply('{"title": "t", "inner": {"score": 1}, "note": null}', Answer) == (
        Answer(title="t", inner=Inner(score=1))
    )


@pytest.mark.parametrize(
    "content",
    [
        '```json\n{"score": 4}\n```',
        '```\n{"score": 4}\n```',
        'Here you go:\n```json\n{"score": 4}\n```\nAnything else?',
        '  {"score": 4}\n',
    ],
)
def test_parse_structured_tolerates_fences(content: str) -> None:
    assert validate_reply(content, Inner) == Inner(score=4)


def test_parse_structured_names_model_and_first_problem() -> None:
    with pytest.raises(ResponseValidationError) as caught:
        validate_reply('{"title": "t", "inner": {"score": "high"}}', Answer)
    message = str(caught.value)
    assert "Answer" in message
    assert "inner.score" in message
    assert "valid integer" in message


def test_parse_structured_counts_further_problems() -> None:
    with pytest.raises(ResponseValidationError, match=r"title: Field required \(and 1 more"):
        validate_reply("{}", Answer)


def test_parse_structured_says_when_reply_is_not_json() -> None:
    with pytest.raises(ResponseValidationError, match="not valid JSON for Inner") as caught:
        validate_reply("I think the score is four.", Inner)
    assert "I think the score" in str(caught.value)
