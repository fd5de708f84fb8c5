"""The SSE reader both clients share: deltas, the folded reply, and broken streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plait.clients.base import ChatRequest
from plait.clients.sse import StreamAssembler, is_event_stream, stream_body
from plait.errors import (
    PermanentError,
    ResponseTooLargeError,
    StreamInterruptedError,
    TransientError,
)

URL = "http://sim/v1/chat/completions"


def event(**chunk: Any) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def content(text: str) -> bytes:
    return event(choices=[{"index": 0, "delta": {"content": text}, "finish_reason": None}])


def finish(reason: str = "stop") -> bytes:
    return event(choices=[{"index": 0, "delta": {}, "finish_reason": reason}])


def assembler(cap: int = 1 << 20) -> tuple[StreamAssembler, list[str]]:
    seen: list[str] = []
    return StreamAssembler(seen.append, cap, URL), seen


def test_the_body_asks_for_a_stream_with_usage() -> None:
    body = stream_body(ChatRequest(messages=[{"role": "user", "content": "hi"}], model="m"))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "m"


def test_deltas_pass_on_as_they_arrive_even_split_across_reads() -> None:
    reader, seen = assembler()
    wire = content("Hel") + b": a comment\n\n" + content("lo") + finish()
    wire += event(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2}, model="m-1")
    wire += b"data: [DONE]\n\n"
    for position in range(0, len(wire), 7):  # reads that cut lines and events in two
        reader.feed(wire[position : position + 7])
        if position == 0:
            assert seen == []
    reply = reader.reply(None)
    assert seen == ["Hel", "lo"]
    assert (reply.content, reply.finish_reason, reply.model) == ("Hello", "stop", "m-1")
    assert (reply.input_tokens, reply.output_tokens) == (3, 2)


def test_crlf_lines_and_multi_line_data_are_read() -> None:
    reader, seen = assembler()
    chunk = json.dumps({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    reader.feed(b"data:" + chunk[:10].encode() + b"\r\ndata:" + chunk[10:].encode() + b"\r\n\r\n")
    reader.feed(finish())
    assert reader.reply(None).content == "x"
    assert seen == ["x"]


def test_tool_calls_arrive_in_fragments_and_are_joined() -> None:
    reader, seen = assembler()
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    reader.feed(event(choices=[{"index": 0, "delta": {"tool_calls": [first]}}]))
    for piece in ('{"city": ', '"Paris"}'):
        fragment = {"index": 0, "function": {"arguments": piece}}
        reader.feed(event(choices=[{"index": 0, "delta": {"tool_calls": [fragment]}}]))
    reader.feed(finish("tool_calls") + b"data: [DONE]\n\n")
    reply = reader.reply(None)
    (call,) = reply.tool_calls
    assert (call.id, call.name, call.parsed) == ("call_1", "get_weather", {"city": "Paris"})
    assert seen == []


def test_a_stream_without_done_but_with_a_finish_reason_is_whole() -> None:
    reader, _ = assembler()
    reader.feed(content("ok") + finish())
    assert reader.reply(None).content == "ok"


def test_a_stream_that_stops_short_is_an_error_never_half_an_answer() -> None:
    reader, _ = assembler()
    reader.feed(content("half an ans"))
    with pytest.raises(TransientError, match="ended before its last chunk") as caught:
        reader.reply(None)
    interrupted = reader.interrupted(caught.value)
    assert isinstance(interrupted, StreamInterruptedError)
    assert "after 11 characters" in str(interrupted)


def test_a_failure_before_any_delta_stays_retryable() -> None:
    reader, _ = assembler()
    assert reader.interrupted(TransientError("reset")) is None


def test_an_error_event_inside_the_stream_is_raised() -> None:
    reader, _ = assembler()
    with pytest.raises(TransientError, match="overloaded"):
        reader.feed(event(error={"message": "overloaded", "type": "server_error"}))
    reader, _ = assembler()
    with pytest.raises(PermanentError, match="bad schema"):
        reader.feed(event(error={"message": "bad schema", "type": "invalid_request_error"}))


def test_an_event_that_is_not_json_is_a_malformed_stream() -> None:
    reader, _ = assembler()
    with pytest.raises(TransientError, match="malformed stream"):
        reader.feed(b"data: {nope\n\n")


def test_the_byte_cap_holds_for_a_stream() -> None:
    reader, _ = assembler(cap=128)
    reader.feed(content("0123456789"))
    with pytest.raises(ResponseTooLargeError, match="max_response_bytes"):
        reader.feed(content("0123456789"))


def test_event_stream_content_types() -> None:
    assert is_event_stream("text/event-stream; charset=utf-8")
    assert not is_event_stream("application/json")
    assert not is_event_stream(None)
