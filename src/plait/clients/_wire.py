"""The chat-completions wire format, shared by every client.

Both clients build the same JSON body and classify failures the same way, so
the scheduler's retry decisions do not depend on which HTTP stack an endpoint
uses. The success path (:func:`build_body`, :func:`encode_body`,
:func:`decode_reply`) runs once per request and is kept to plain dict work;
everything else only runs when something went wrong.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import BaseModel

from plait.clients.base import ChatRequest, ChatResponse, RawToolCall
from plait.clients.dialects import apply_structured_output, rejects_structured_output
from plait.clients.structured import validate_reply
from plait.errors import (
    LLMError,
    PermanentError,
    QuotaExceededError,
    RateLimitError,
    ResponseTooLargeError,
    ResponseValidationError,
    StructuredOutputRejectedError,
    TransientError,
)

__all__ = [
    "build_body",
    "check_declared_length",
    "decode_reply",
    "encode_body",
    "error_for_status",
    "read_capped",
    "read_reply",
    "redact",
    "retry_after_seconds",
    "transport_error",
]

_REDACTED = "***"
_MAX_SERVER_MESSAGE = 500
_MAX_EXCERPT = 120
# 408 (request timeout) and 409 (conflict, e.g. a lock held elsewhere) say
# "not now" rather than "never"; every OpenAI-compatible SDK retries them too.
_TRANSIENT_4XX = frozenset({408, 409})


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for ``request``.

    ``options`` go in first so the named fields win a clash: an option can add
    ``top_p`` or ``seed`` but can never redirect the call to another model or
    replace the messages.
    """
    body: dict[str, Any] = dict(request.options) if request.options else {}
    body["model"] = request.model
    body["messages"] = request.messages
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.response_format is not None:
        apply_structured_output(body, request, request.response_format)
    if request.tools:
        body["tools"] = request.tools
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    return body


def encode_body(request: ChatRequest) -> bytes:
    """The request body as bytes, ready to send without another encoding pass."""
    return json.dumps(build_body(request), separators=(",", ":")).encode()


def decode_reply(
    raw: bytes,
    response_format: type[BaseModel] | None,
    headers: Mapping[str, str] | None = None,
    secret: str | None = None,
) -> ChatResponse:
    """Read a 2xx body.

    ``headers`` are only looked at when the body is not JSON, to say what it
    was; the excerpt quoted then has ``secret`` blanked out.

    Raises:
        TransientError: the body is not JSON or does not carry an answer; a
            server that sent half a body, or a proxy's error page, will
            usually send a whole reply next time.
        ResponseValidationError: the reply does not fit ``response_format``.
    """
    try:
        data = json.loads(raw)
    except ValueError:
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        kind = lowered.get("content-type") or "no content type"
        head = raw[: 4 * _MAX_EXCERPT].decode("utf-8", "replace")
        text = redact(" ".join(head.split()), secret)
        excerpt = _clip(text, _MAX_EXCERPT)
        raise TransientError(
            f"malformed reply: the body is not JSON ({kind}): {excerpt or '(empty)'}"
        ) from None
    return read_reply(data, response_format)


def read_reply(data: Any, response_format: type[BaseModel] | None) -> ChatResponse:
    """Turn a decoded chat-completions reply into a :class:`ChatResponse`.

    A reply must carry what was asked: a first choice whose message has text
    (or tool calls, or a refusal). Anything less is a :class:`TransientError`
    naming what was missing, never an empty answer that a cache or a
    checkpoint would then keep.
    """
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise TransientError("malformed reply: the body has no 'choices'")
    if not choices:
        raise TransientError("malformed reply: 'choices' is empty")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise TransientError("malformed reply: the first choice has no 'message'")
    content = message.get("content")
    refusal = message.get("refusal")
    if content is None:
        content = _absent_content(message, refusal, response_format, choice.get("finish_reason"))
    elif not isinstance(content, str):
        raise TransientError("malformed reply: the message's content is not a string")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    tool_calls = _tool_calls(message.get("tool_calls"))
    parsed = None
    if response_format is not None and not tool_calls:
        parsed = _structured_reply(content, refusal, response_format)
    return ChatResponse(
        content=content,
        model=data.get("model") or "",
        finish_reason=choice.get("finish_reason"),
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        parsed=parsed,
        tool_calls=tool_calls,
    )


def _tool_calls(raw: Any) -> list[RawToolCall]:
    """The reply's tool calls, with each one's arguments parsed as far as JSON goes.

    A call without a function name cannot be answered, so it makes the reply
    malformed (a retry usually mends it); arguments that are not a JSON object
    are the model's mistake, kept on the call so it can be told about it.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TransientError("malformed reply: the message's 'tool_calls' is not a list")
    calls = []
    for position, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TransientError(f"malformed reply: tool call {position} has no function name")
        name: str = function["name"]
        if not name:
            raise TransientError(f"malformed reply: tool call {position} has no function name")
        call_id = item.get("id")
        calls.append(_parsed_call(str(call_id or f"call_{position}"), name, function))
    return calls


def _parsed_call(call_id: str, name: str, function: dict[str, Any]) -> RawToolCall:
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        # Some servers send the object itself rather than its JSON text.
        return RawToolCall(call_id, name, json.dumps(arguments), arguments)
    text = arguments if isinstance(arguments, str) else ""
    if not text.strip():
        return RawToolCall(call_id, name, text, {})
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        why = f"the arguments for {name!r} are not valid JSON ({exc}): {_clip(text, _MAX_EXCERPT)}"
        return RawToolCall(call_id, name, text, error=why)
    if not isinstance(parsed, dict):
        why = f"the arguments for {name!r} must be a JSON object, got {type(parsed).__name__}"
        return RawToolCall(call_id, name, text, error=why)
    return RawToolCall(call_id, name, text, parsed)


def _absent_content(
    message: dict[str, Any],
    refusal: Any,
    response_format: type[BaseModel] | None,
    finish_reason: Any,
) -> str:
    """What a message with ``content: null`` stands for, or the error it is.

    Tool calls are an answer without text, and a refusal to a structured
    request is reported by :func:`_structured_reply`; both read as ``""``. A
    refusal of a plain request is final. Nothing at all is a bad reply.
    """
    if message.get("tool_calls") or (refusal and response_format is not None):
        return ""
    if refusal:
        raise PermanentError(f"the model refused to answer: {_clip(str(refusal))}")
    raise TransientError(
        "malformed reply: the message's content is null and it has no tool calls "
        f"(finish_reason {finish_reason!r})"
    )


def _structured_reply(
    content: str, refusal: str | None, response_format: type[BaseModel]
) -> BaseModel:
    """Validate a structured reply, naming a refusal as such rather than as bad JSON."""
    if refusal and not content:
        raise ResponseValidationError(
            f"the model refused to produce {response_format.__name__}: {refusal}"
        )
    return validate_reply(content, response_format)


def check_declared_length(declared: int | None, cap: int, url: str) -> None:
    """Refuse a reply whose ``Content-Length`` is over ``cap`` before reading any of it."""
    if declared is not None and declared > cap:
        raise _too_large(url, cap, f"it declares {declared} bytes")


async def read_capped(chunks: AsyncIterable[bytes], cap: int, url: str) -> bytes:
    """The body ``chunks`` add up to, refusing it as soon as it passes ``cap`` bytes.

    The chunks are the decoded body, so a compressed reply is held to the
    same cap as a plain one. The caller closes the connection when this
    raises; the rest of the body is never read.
    """
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise _too_large(url, cap, f"more than {cap} bytes arrived")
        parts.append(chunk)
    return b"".join(parts)


def _too_large(url: str, cap: int, why: str) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"the reply from {url} is larger than max_response_bytes ({cap}): {why}; "
        "reading stopped there (raise the endpoint's max_response_bytes if such "
        "replies are expected)"
    )


def error_for_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | None,
    secret: str | None = None,
) -> LLMError:
    """The plait error for a non-2xx reply (the caller raises it).

    429 becomes :class:`RateLimitError` carrying the server's requested delay,
    unless its body says ``insufficient_quota``: that account is out of
    credit, no delay will change it, so it is :class:`QuotaExceededError`
    (permanent) and the call fails at once instead of waiting out its
    ``max_rate_limit_wait``. A refusal of the structured-output form is
    :class:`StructuredOutputRejectedError`, which the resource layer may answer
    in another dialect. 408, 409 and 5xx are worth retrying; any other status is final. The
    message carries the status and the server's own explanation, with
    ``secret`` blanked out in case the server echoed the key back.

    A redirect is final too: neither client follows one, since following it
    would send the prompt, and headers that may hold credentials, to wherever
    the ``Location`` points. The message names that place so the endpoint's
    ``base_url`` can be set to it.
    """
    if 300 <= status < 400:
        lowered = {name.lower(): value for name, value in headers.items()}
        location = redact(lowered.get("location", "nowhere (no Location header)"), secret)
        return PermanentError(
            f"HTTP {status}: the endpoint redirects to {location}; plait does not follow "
            "redirects (they would carry the prompt and the key along), so set the "
            "endpoint's base_url to the final address",
            status_code=status,
        )
    detail = redact(_server_message(body), secret)
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 429:
        if _says_insufficient_quota(body):
            return QuotaExceededError(
                f"{message} (insufficient_quota: the account behind this endpoint's key has "
                "no credit left; retrying will not help)",
                status_code=429,
            )
        return RateLimitError(message, retry_after=retry_after_seconds(headers), status_code=429)
    if rejects_structured_output(status, detail):
        return StructuredOutputRejectedError(message, status_code=status)
    if status >= 500 or status in _TRANSIENT_4XX:
        return TransientError(message, status_code=status)
    return PermanentError(message, status_code=status)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The delay a 429 asks for, in seconds, or ``None`` when it names none.

    ``retry-after-ms`` (OpenAI's finer-grained header) wins over the standard
    ``Retry-After``, which may be a number of seconds or an HTTP date.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    millis = _non_negative(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transport_error(exc: BaseException, url: str) -> TransientError:
    """The plait error for a failure below HTTP: refused, reset, timed out, cut short."""
    if isinstance(exc, TimeoutError):
        return TransientError(f"request to {url} timed out")
    reason = str(exc) or "no detail"
    return TransientError(f"connection to {url} failed: {type(exc).__name__}: {reason}")


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` blanked out."""
    if secret and secret in text:
        return text.replace(secret, _REDACTED)
    return text


def _non_negative(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return max(0.0, number)


def _server_message(body: bytes | str | None) -> str:
    """The explanation in an error body: ``error.message`` when it is JSON, else the text."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return _clip(text.strip())
    message = _message_in(data)
    return _clip(message if message is not None else text.strip())


def _says_insufficient_quota(body: bytes | str | None) -> bool:
    """Whether an error body's ``error.code`` or ``error.type`` is ``insufficient_quota``.

    Read from the parsed fields rather than by searching the text, so a rate
    limit message that merely mentions quotas stays a rate limit.
    """
    if not body:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return False
    return "insufficient_quota" in (error.get("code"), error.get("type"))


def _message_in(data: Any) -> str | None:
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return None
    for key in ("error", "message", "detail"):
        if key in data:
            found = _message_in(data[key])
            if found is not None:
                return found
    return None


def _clip(text: str, limit: int = _MAX_SERVER_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + "..."
