"""Streamed chat completions: server-sent events in, text deltas and one reply out.

Both clients hand the raw bytes of a ``stream: true`` reply to a
:class:`StreamAssembler`, so what counts as a delta, a finished stream and a
broken one is decided once. The assembler passes each text delta on as it
arrives and, at the end, folds the chunks into the same reply dict a
non-streamed call gets, which goes through the same reader
(:func:`~plait.clients._wire.read_reply`): a streamed reply is validated,
cached and checkpointed exactly like a whole one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from plait.clients._wire import build_body, decode_reply, read_reply
from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import (
    LLMError,
    PermanentError,
    ResponseTooLargeError,
    StreamInterruptedError,
    TransientError,
)

__all__ = ["DeltaSink", "StreamAssembler", "is_event_stream", "stream_body"]

DeltaSink = Callable[[str], None]
"""Receives each text delta of a streamed reply, in order, as it arrives."""

_DONE = "[DONE]"


def stream_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for streaming ``request``, with usage asked for in the last chunk.

    Without ``include_usage`` an OpenAI-compatible server sends no token
    counts at all for a stream, and usage, budgets and token rate limits
    would all see a free call.
    """
    body = build_body(request)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


def is_event_stream(content_type: str | None) -> bool:
    """Whether a 2xx reply is an SSE stream (else the server ignored ``stream`` and
    sent one whole JSON reply, which is read as such)."""
    return bool(content_type) and "text/event-stream" in str(content_type).lower()


def unstreamed_reply(
    raw: bytes,
    request: ChatRequest,
    headers: Mapping[str, str],
    secret: str | None,
    on_delta: Callable[[str], None],
) -> ChatResponse:
    """A server that ignored ``stream`` sent one whole JSON reply: read it as such,
    and pass its text on as the stream's one delta."""
    reply = decode_reply(raw, request.response_format, headers, secret)
    if reply.content:
        on_delta(reply.content)
    return reply


class StreamAssembler:
    """Reads one SSE reply: forwards text deltas, keeps the rest for the final reply.

    ``delivered`` counts the characters already passed to ``on_delta``; once it
    is non-zero a failure can no longer be retried unseen (see
    :meth:`interrupted`). ``cap`` bounds the bytes read, like a whole reply's
    ``max_response_bytes``.
    """

    __slots__ = (
        "_cap",
        "_content",
        "_data",
        "_finish",
        "_model",
        "_on_delta",
        "_pending",
        "_refusal",
        "_size",
        "_tools",
        "_url",
        "_usage",
        "delivered",
        "done",
    )

    def __init__(self, on_delta: DeltaSink, cap: int, url: str) -> None:
        self._on_delta = on_delta
        self._cap = cap
        self._url = url
        self._size = 0
        self._pending = b""
        self._data: list[str] = []
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._tools: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._model = ""
        self._usage: dict[str, Any] = {}
        self.delivered = 0
        self.done = False

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes off the wire; complete events are handled at once."""
        self._size += len(chunk)
        if self._size > self._cap:
            raise ResponseTooLargeError(
                f"the stream from {self._url} is larger than max_response_bytes ({self._cap}); "
                "reading stopped there (raise the endpoint's max_response_bytes if such "
                "replies are expected)"
            )
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r").decode("utf-8", "replace"))

    def reply(self, response_format: type[BaseModel] | None) -> ChatResponse:
        """The whole reply, once the stream has ended; a stream cut short is an error.

        A stream is finished by ``data: [DONE]`` or, from servers that omit
        that line, by a chunk carrying a ``finish_reason``. Anything less is
        half an answer and is never returned as one.
        """
        if self._pending:
            self._line(self._pending.rstrip(b"\r").decode("utf-8", "replace"))
            self._pending = b""
        self._line("")
        if not self.done and self._finish is None:
            raise TransientError(
                f"the stream from {self._url} ended before its last chunk "
                f"(no [DONE] and no finish_reason, after {self.delivered} characters)"
            )
        message: dict[str, Any] = {"content": "".join(self._content) if self._content else None}
        if self._refusal:
            message["refusal"] = "".join(self._refusal)
        if self._tools:
            message["tool_calls"] = [self._tools[index] for index in sorted(self._tools)]
        data = {
            "model": self._model,
            "choices": [{"message": message, "finish_reason": self._finish}],
            "usage": self._usage,
        }
        return read_reply(data, response_format)

    def interrupted(self, error: LLMError) -> StreamInterruptedError | None:
        """The error to raise instead of ``error`` when text was already delivered.

        Before the first delta a broken stream is an ordinary failed call and
        ``error`` stands (None is returned), so the retry policy treats it as
        it would a whole reply. After it, retrying would send the consumer the
        text a second time, so the call fails for good with what was lost.
        """
        if not self.delivered or not isinstance(error, TransientError):
            return None
        return StreamInterruptedError(
            f"the stream from {self._url} broke after {self.delivered} characters of the "
            f"reply had been delivered: {error}. The partial reply is not kept (not cached, "
            "not checkpointed); call again for a whole one"
        )

    def _line(self, line: str) -> None:
        if not line:
            if self._data:
                payload = "\n".join(self._data)
                self._data.clear()
                self._event(payload)
            return
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        # Comments (":"), "event:", "id:" and "retry:" lines carry nothing plait uses.

    def _event(self, payload: str) -> None:
        if payload == _DONE:
            self.done = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise TransientError(
                f"malformed stream from {self._url}: an event is not JSON: {payload[:120]!r}"
            ) from None
        if not isinstance(chunk, dict):
            raise TransientError(f"malformed stream from {self._url}: an event is not an object")
        if "error" in chunk:
            raise _stream_error(chunk["error"])
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self._model = chunk["model"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finish = finish
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._content.append(text)
            self.delivered += len(text)
            self._on_delta(text)
        elif isinstance(text, str) and not self._content:
            self._content.append("")
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            self._refusal.append(refusal)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_fragment(call)

    def _tool_fragment(self, fragment: dict[str, Any]) -> None:
        """Merge one piece of a tool call: the first names it, later ones add arguments."""
        index = fragment.get("index", len(self._tools))
        if not isinstance(index, int):
            raise TransientError(f"malformed stream from {self._url}: a tool call has no index")
        call = self._tools.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if isinstance(fragment.get("id"), str):
            call["id"] = fragment["id"]
        function = fragment.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                call["function"]["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                call["function"]["arguments"] += function["arguments"]


def _stream_error(error: Any) -> LLMError:
    """An error event inside a 200 stream: the server gave up part-way.

    Servers use it for overload and for internal failures alike, so it is
    transient unless it says the request itself was bad.
    """
    message = error.get("message") if isinstance(error, dict) else error
    kind = error.get("type") if isinstance(error, dict) else None
    text = f"the server ended the stream with an error: {str(message)[:500]}"
    if kind == "invalid_request_error":
        return PermanentError(text)
    return TransientError(text)
