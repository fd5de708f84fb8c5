"""The default client: chat completions over plait's own small HTTP/1.1 pool.

It exists for speed. The OpenAI SDK spends about 1.4 ms of CPU per request
building option objects, headers and pydantic models (DESIGN section 8), and
aiohttp about 0.28 ms; at high concurrency and low latency that CPU, not the
network, bounds throughput. This client does the minimum per request: one
``json.dumps``, one write of ready bytes on a kept-alive connection
(:mod:`plait.clients._http`), one ``json.loads``, and a plain-dict read of the
reply.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping

from plait.clients._http import HttpPool, HttpResponse
from plait.clients._wire import (
    check_declared_length,
    decode_reply,
    encode_body,
    error_for_status,
    read_capped,
    transport_error,
)
from plait.clients.base import DEFAULT_MAX_RESPONSE_BYTES, ChatRequest, ChatResponse
from plait.clients.sse import StreamAssembler, is_event_stream, stream_body, unstreamed_reply
from plait.errors import LLMError, PermanentError, TransientError

__all__ = ["LeanClient"]

# Failures below HTTP: refused, reset, cut short (HttpProtocolError is a
# ConnectionError), timed out, or a TLS handshake that failed (see _failure).
_TRANSPORT_ERRORS = (OSError, TimeoutError)


class LeanClient:
    """Sends chat-completions requests to one OpenAI-compatible endpoint.

    Connections open on the first request, inside the loop that sends it,
    are kept alive and capped at ``max_connections``; ``timeout`` bounds each
    whole request and ``max_response_bytes`` each reply body. Call
    :meth:`aclose` to release them.
    """

    __slots__ = (
        "_api_key",
        "_base_url",
        "_max_connections",
        "_max_response_bytes",
        "_pool",
        "_reply_head",
        "_stream_head",
        "_timeout",
        "_url_text",
    )

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._url_text = f"{self._base_url}/chat/completions"
        self._api_key = api_key
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        fixed = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"}
        fixed.update(headers or {})
        if api_key:
            fixed["Authorization"] = f"Bearer {api_key}"
        self._pool = HttpPool(self._url_text, max_connections)
        self._reply_head = self._pool.head({**fixed, "Accept": "application/json"})
        self._stream_head = self._pool.head({**fixed, "Accept": "text/event-stream"})

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (
            f"LeanClient(base_url={self._base_url!r}, api_key={key}, "
            f"timeout={self._timeout!r}, max_connections={self._max_connections!r})"
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` and read the reply.

        Raises:
            RateLimitError: the endpoint answered 429.
            TransientError: connection failure, timeout, 408/409/5xx, or a
                malformed 2xx body.
            PermanentError: a redirect, or any other refusal.
            ResponseTooLargeError: the body passed ``max_response_bytes``.
            ResponseValidationError: the reply does not fit ``response_format``.
        """
        data = encode_body(request)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._pool.post(self._reply_head, data)
                raw = await self._read(response)
        except _TRANSPORT_ERRORS as exc:
            raise _failure(exc, self._url_text) from exc
        if response.status >= 300:
            raise error_for_status(response.status, response.headers, raw, self._api_key)
        return decode_reply(raw, request.response_format, response.headers, self._api_key)

    async def stream(self, request: ChatRequest, on_delta: Callable[[str], None]) -> ChatResponse:
        """Send ``request`` with ``stream: true``; ``on_delta`` gets each text delta.

        Returns the whole reply once the stream ends. A stream may rightly
        outlast ``timeout``; what may not is the silence before the reply or
        between two chunks, so the deadline moves on with every chunk.
        Leaving early (a cancel) closes the connection rather than returning
        it to the pool, since the rest of the stream would still be on it.
        Raises what :meth:`complete` raises, and
        :class:`~plait.errors.StreamInterruptedError` for a failure after the
        first delta.
        """
        data = json.dumps(stream_body(request), separators=(",", ":")).encode()
        assembler = StreamAssembler(on_delta, self._max_response_bytes, self._url_text)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                response = await self._pool.post(self._stream_head, data)
                try:
                    if response.status >= 300 or not is_event_stream(response.content_type):
                        raw = await self._read(response)
                        if response.status >= 300:
                            raise error_for_status(
                                response.status, response.headers, raw, self._api_key
                            )
                        return unstreamed_reply(
                            raw, request, response.headers, self._api_key, on_delta
                        )
                    async for chunk in response.chunks():
                        deadline.reschedule(loop.time() + self._timeout)
                        assembler.feed(chunk)
                    return assembler.reply(request.response_format)
                finally:
                    response.close()
        except _TRANSPORT_ERRORS as exc:
            failure = _failure(exc, self._url_text)
            raise (assembler.interrupted(failure) or failure) from exc
        except TransientError as exc:
            interrupted = assembler.interrupted(exc)
            if interrupted is None:
                raise
            raise interrupted from exc

    async def aclose(self) -> None:
        """Close the pooled connections; safe to call twice."""
        await self._pool.aclose()

    async def _read(self, response: HttpResponse) -> bytes:
        """The body, never holding more than ``max_response_bytes`` of it."""
        cap = self._max_response_bytes
        declared = response.content_length
        try:
            check_declared_length(declared, cap, self._url_text)
            if declared is not None and not response.compressed:
                # The read stops at the declared length, which is within the cap.
                return await response.read()
            # Chunked, compressed or closed-delimited: only counting the
            # decoded bytes bounds it.
            return await read_capped(response.chunks(), cap, self._url_text)
        finally:
            # A no-op once the body was read; otherwise the rest is never read.
            response.close()


def _failure(exc: BaseException, url: str) -> LLMError:
    """The plait error for a failure below HTTP.

    All are transient but one: a certificate that does not verify will not
    verify on a retry either, and retrying would only hide, for as long as
    the retry policy lasts, a setup problem that the message can name.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentError(
            f"connection to {url} failed: the server's TLS certificate could not be verified "
            f"({exc.verify_message or exc.reason}). If the endpoint uses a private CA or a "
            "self-signed certificate, point SSL_CERT_FILE at a PEM file that holds it"
        )
    return transport_error(exc, url)
