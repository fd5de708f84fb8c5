"""The default client: chat completions over one bare aiohttp session.

It exists for speed. The OpenAI SDK spends about 1.4 ms of CPU per request
building option objects, headers and pydantic models (DESIGN section 8); at
high concurrency and low latency that CPU, not the network, bounds
throughput. This client does the minimum per request: one ``json.dumps``, one
POST of ready bytes to a pre-parsed URL with headers fixed on the session, one
``json.loads``, and a plain-dict read of the reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import hdrs
from yarl import URL

from plait.clients._wire import (
    check_declared_length,
    decode_reply,
    encode_body,
    error_for_status,
    read_capped,
    transport_error,
)
from plait.clients.base import DEFAULT_MAX_RESPONSE_BYTES, ChatRequest, ChatResponse
from plait.clients.sse import StreamAssembler, is_event_stream, stream_body
from plait.errors import TransientError

__all__ = ["LeanClient"]

# Failures below HTTP. aiohttp wraps most socket errors in ClientError, but a
# reset can still surface as a bare ConnectionError while the body is read.
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)
_STREAM_ACCEPT = {"Accept": "text/event-stream"}


class LeanClient:
    """Sends chat-completions requests to one OpenAI-compatible endpoint.

    Create it inside the event loop that will use it; the HTTP session is
    opened on the first request and bound to that loop. Connections are kept
    alive and capped at ``max_connections``; ``timeout`` bounds each whole
    request and ``max_response_bytes`` each reply body. Call :meth:`aclose`
    to release them.
    """

    __slots__ = (
        "_api_key",
        "_base_url",
        "_headers",
        "_max_connections",
        "_max_response_bytes",
        "_session",
        "_timeout",
        "_url",
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
        self._url = URL(self._url_text)
        self._api_key = api_key
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        fixed = {"Content-Type": "application/json", "Accept": "application/json"}
        fixed.update(headers or {})
        if api_key:
            fixed["Authorization"] = f"Bearer {api_key}"
        self._headers = fixed
        self._session: aiohttp.ClientSession | None = None

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
        session = self._session
        if session is None:
            session = self._open()
        try:
            async with session.post(self._url, data=data, allow_redirects=False) as response:
                raw = await self._read(response)
                status = response.status
                if status >= 300:
                    raise error_for_status(status, response.headers, raw, self._api_key)
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self._url_text) from exc
        return decode_reply(raw, request.response_format, response.headers, self._api_key)

    async def stream(self, request: ChatRequest, on_delta: Callable[[str], None]) -> ChatResponse:
        """Send ``request`` with ``stream: true``; ``on_delta`` gets each text delta.

        Returns the whole reply once the stream ends. Leaving early (a cancel)
        closes the connection rather than returning it to the pool, since the
        rest of the stream would still be on it. Raises what :meth:`complete`
        raises, and :class:`~plait.errors.StreamInterruptedError` for a
        failure after the first delta.
        """
        data = json.dumps(stream_body(request), separators=(",", ":")).encode()
        session = self._session
        if session is None:
            session = self._open()
        assembler = StreamAssembler(on_delta, self._max_response_bytes, self._url_text)
        try:
            async with session.post(
                self._url,
                data=data,
                allow_redirects=False,
                headers=_STREAM_ACCEPT,
                # A stream may rightly outlast ``timeout``; what must not is
                # the silence before a connection or between two chunks.
                timeout=aiohttp.ClientTimeout(sock_connect=self._timeout, sock_read=self._timeout),
            ) as response:
                try:
                    if response.status >= 300 or not is_event_stream(response.content_type):
                        raw = await self._read(response)
                        if response.status >= 300:
                            raise error_for_status(
                                response.status, response.headers, raw, self._api_key
                            )
                        reply = decode_reply(
                            raw, request.response_format, response.headers, self._api_key
                        )
                        if reply.content:
                            on_delta(reply.content)
                        return reply
                    async for chunk in response.content.iter_any():
                        assembler.feed(chunk)
                    return assembler.reply(request.response_format)
                except BaseException:
                    response.close()
                    raise
        except _TRANSPORT_ERRORS as exc:
            failure = transport_error(exc, self._url_text)
            raise (assembler.interrupted(failure) or failure) from exc
        except TransientError as exc:
            interrupted = assembler.interrupted(exc)
            if interrupted is None:
                raise
            raise interrupted from exc

    async def aclose(self) -> None:
        """Close the session and its pooled connections; safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self._max_response_bytes
        declared = response.content_length
        check_declared_length(declared, cap, self._url_text)
        if declared is not None and hdrs.CONTENT_ENCODING not in response.headers:
            # aiohttp stops at the declared length, which is within the cap.
            return await response.read()
        # Chunked or compressed: only counting the decoded bytes bounds it.
        return await read_capped(response.content.iter_any(), cap, self._url_text)

    def _open(self) -> aiohttp.ClientSession:
        # Opened lazily so the client can be built anywhere yet bind to the
        # loop that actually uses it.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers=self._headers,
        )
        return self._session
