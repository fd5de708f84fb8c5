"""The client protocol every LLM backend implements.

The execution layer only ever sees :class:`ChatRequest`, :class:`ChatResponse`
and :class:`LLMClient`; which HTTP stack sits behind them is a per-endpoint
choice. Requests and responses are slotted dataclasses because one of each is
built per LLM call and the hot path cannot afford pydantic here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""The largest reply body a client reads, unless its endpoint says otherwise.

A chat completion is kilobytes; 16 MiB leaves room for long structured
replies while a broken or hostile server cannot make a client hold gigabytes.
"""

StructuredDialect = Literal["json_schema", "json_object", "prompt"]
"""How a request asks for structured output (see ``plait.clients.dialects``)."""


@dataclass(slots=True)
class ChatRequest:
    """One chat-completions call, before an endpoint is chosen.

    ``model`` is filled in by the resource layer from the chosen endpoint, so
    modules never name models, only aliases.
    """

    messages: list[dict[str, Any]]
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    response_format: type[BaseModel] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    """The OpenAI ``tools`` array: one ``{"type": "function", "function": ...}`` per tool."""
    tool_choice: str | dict[str, Any] | None = None
    structured_output: StructuredDialect = "json_schema"
    """The dialect ``response_format`` is sent in; the resource layer sets it per endpoint."""


@dataclass(slots=True, frozen=True)
class RawToolCall:
    """One tool call as the reply carried it, before it meets the tool it names.

    The client layer does not know the tools' Python types, so it only parses
    the arguments' JSON: ``parsed`` is the object, or ``None`` with ``error``
    saying why the text is not one. ``arguments`` keeps the text as sent,
    because a conversation that continues must echo it back unchanged.
    """

    id: str
    name: str
    arguments: str
    parsed: dict[str, Any] | None = None
    error: str | None = None


@dataclass(slots=True)
class ChatResponse:
    """The parts of a chat-completions reply that plait uses."""

    content: str
    model: str
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    parsed: BaseModel | None = None
    tool_calls: list[RawToolCall] = field(default_factory=list)


@runtime_checkable
class LLMClient(Protocol):
    """Sends chat requests to one endpoint.

    Implementations raise :class:`plait.errors.RateLimitError` on 429,
    :class:`plait.errors.TransientError` on connection failures, timeouts, 5xx
    and bodies that are unreadable or carry no answer, and
    :class:`plait.errors.PermanentError` on any other refusal (a redirect, a
    body over ``max_response_bytes``), so the scheduler can decide between
    retry and failure.
    """

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class StreamingClient(LLMClient, Protocol):
    """A client that can also read a reply as a token stream (SSE).

    ``stream`` sends ``request`` with ``stream: true``, calls ``on_delta`` with
    each text delta as it arrives, and returns the whole reply once the stream
    has ended, with usage from its last chunk. It raises what ``complete``
    raises, except that a failure after the first delta is a
    :class:`plait.errors.StreamInterruptedError`. Cancelling it closes the
    HTTP stream. A client without it still streams, as one delta at the end.
    """

    async def stream(
        self, request: ChatRequest, on_delta: Callable[[str], None]
    ) -> ChatResponse: ...
