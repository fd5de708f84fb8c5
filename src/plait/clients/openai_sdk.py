"""A client on the official OpenAI SDK, for endpoints that need its behaviour.

:class:`~plait.clients.lean.LeanClient` is faster; this one trades about a
millisecond of CPU per request for the SDK's handling of provider quirks. It
sends the same JSON body as the lean client (built by the shared wire module
and passed as ``extra_body``) and maps the SDK's exceptions onto the same
plait errors, so switching clients changes speed, not behaviour. The SDK's own
retries are off: plait's scheduler owns retrying.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from plait.clients._wire import (
    build_body,
    check_declared_length,
    decode_reply,
    error_for_status,
    read_capped,
    transport_error,
)
from plait.clients.base import DEFAULT_MAX_RESPONSE_BYTES, ChatRequest, ChatResponse
from plait.clients.sse import StreamAssembler, is_event_stream, stream_body, unstreamed_reply
from plait.errors import ConfigError, LLMError, TransientError

__all__ = ["OpenAIClient"]

# The SDK refuses to start without some key; this stands in when the endpoint
# needs none, and the Authorization header is then omitted from every request.
_NO_KEY = "plait-no-key"


class OpenAIClient:
    """Sends chat-completions requests through ``openai.AsyncOpenAI``.

    By default the SDK runs on its aiohttp transport (the httpx one costs ten
    times the CPU per request); ``http_client`` injects another, e.g. a plain
    ``httpx.AsyncClient`` that respx can intercept in tests. An injected
    client belongs to the caller and is not closed by :meth:`aclose`; it must
    not follow redirects, which no plait client does, and ``max_response_bytes``
    bounds only the replies of the client built here.
    """

    __slots__ = (
        "_api_key",
        "_base_url",
        "_extra_headers",
        "_max_response_bytes",
        "_owns_http",
        "_sdk",
        "_timeout",
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
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._owns_http = http_client is None
        if http_client is None:
            limits = httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
            # The SDK's default follows redirects; plait never does (see error_for_status).
            http_client = _CappedHttpClient(
                max_response_bytes,
                f"{self._base_url}/chat/completions",
                timeout=timeout,
                limits=limits,
                follow_redirects=False,
            )
        elif http_client.follow_redirects:
            raise ConfigError(
                "the http_client given to OpenAIClient follows redirects, which would send the "
                "prompt and the key wherever a reply points; build it with follow_redirects=False"
            )
        self._sdk = openai.AsyncOpenAI(
            api_key=api_key or _NO_KEY,
            base_url=self._base_url,
            timeout=timeout,
            max_retries=0,
            default_headers=dict(headers) if headers else None,
            http_client=http_client,
        )
        self._extra_headers: dict[str, Any] | None = (
            None if api_key else {"Authorization": openai.Omit()}
        )

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (
            f"OpenAIClient(base_url={self._base_url!r}, api_key={key}, timeout={self._timeout!r})"
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` and read the reply; raises the same errors as the lean client.

        The reply's bytes go through the shared wire reader rather than the
        SDK's model parsing, so what counts as an answer (and the error for a
        reply that is not one) is decided in one place for both clients.
        """
        body = build_body(request)
        model = body.pop("model")
        messages = cast(Iterable[ChatCompletionMessageParam], body.pop("messages"))
        failure: LLMError
        try:
            reply = await self._sdk.chat.completions.with_raw_response.create(
                model=model,
                messages=messages,
                extra_body=body,
                extra_headers=self._extra_headers,
            )
        except openai.APIStatusError as exc:
            # Built here but raised below, outside this block, so the SDK
            # exception (whose request still carries the key) is not chained.
            failure = error_for_status(
                exc.status_code, exc.response.headers, _body_of(exc), self._api_key
            )
        except openai.APIConnectionError as exc:
            # The SDK's own message is a bland "Connection error."; the cause says
            # which, and is already a plait error when the body passed the cap.
            cause = exc.__cause__ or exc
            if isinstance(cause, LLMError):
                failure = cause
            else:
                failure = transport_error(cause, f"{self._base_url}/chat/completions")
        else:
            http = reply.http_response
            return decode_reply(http.content, request.response_format, http.headers, self._api_key)
        raise failure

    async def stream(self, request: ChatRequest, on_delta: Callable[[str], None]) -> ChatResponse:
        """Stream ``request`` through the SDK; the same contract as the lean client's.

        The SDK sends the request and maps its failures, but the event bytes
        go through the shared :class:`~plait.clients.sse.StreamAssembler`
        rather than the SDK's chunk models, so both clients agree on every
        delta, on usage and on what a broken stream is. Leaving early closes
        the SDK's response, and with it the connection.
        """
        body = stream_body(request)
        model = body.pop("model")
        messages = cast(Iterable[ChatCompletionMessageParam], body.pop("messages"))
        url = f"{self._base_url}/chat/completions"
        assembler = StreamAssembler(on_delta, self._max_response_bytes, url)
        failure: LLMError
        try:
            async with self._sdk.chat.completions.with_streaming_response.create(
                model=model,
                messages=messages,
                extra_body=body,
                extra_headers=self._extra_headers,
            ) as reply:
                http = reply.http_response
                if not is_event_stream(http.headers.get("Content-Type")):
                    whole = await read_capped(http.aiter_bytes(), self._max_response_bytes, url)
                    return unstreamed_reply(whole, request, http.headers, self._api_key, on_delta)
                async for chunk in http.aiter_bytes():
                    assembler.feed(chunk)
                return assembler.reply(request.response_format)
        except openai.APIStatusError as exc:
            failure = error_for_status(
                exc.status_code, exc.response.headers, _body_of(exc), self._api_key
            )
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            failure = cause if isinstance(cause, LLMError) else transport_error(cause, url)
        except (httpx.TransportError, TimeoutError, ConnectionError) as exc:
            # Past the SDK's send, a broken body surfaces from httpx itself.
            failure = transport_error(exc, url)
        except TransientError as exc:
            failure = exc
        raise assembler.interrupted(failure) or failure

    async def aclose(self) -> None:
        """Close the SDK's HTTP client, unless the caller supplied it."""
        if self._owns_http:
            await self._sdk.close()


class _CappedHttpClient(openai.DefaultAioHttpClient):
    """The SDK's aiohttp-backed httpx client, reading each body under a size cap.

    httpx would read a whole body into memory before the SDK sees it, error
    bodies included. This reads the decoded body in chunks and stops once it
    passes the cap, closing the connection; a body within the cap is handed
    on as an ordinary, already-read response.
    """

    def __init__(self, max_response_bytes: int, url: str, **options: Any) -> None:
        super().__init__(**options)
        self._cap = max_response_bytes
        self._url = url

    async def send(
        self, request: httpx.Request, *, stream: bool = False, **options: Any
    ) -> httpx.Response:
        response = await super().send(request, stream=True, **options)
        if stream and response.status_code < 300:
            # A token stream is read, and capped, as it arrives; an error
            # body is read whole here, under the cap, like any other.
            return response
        try:
            declared = response.headers.get("Content-Length")
            check_declared_length(
                int(declared) if declared and declared.isdigit() else None, self._cap, self._url
            )
            body = await read_capped(response.aiter_bytes(), self._cap, self._url)
        finally:
            await response.aclose()
        read = httpx.Response(
            response.status_code,
            headers=[
                (name, value)
                for name, value in response.headers.multi_items()
                if name.lower() not in _BODY_FRAMING
            ],
            content=body,
            request=request,
            extensions=response.extensions,
        )
        read.elapsed = response.elapsed
        return read


# Headers that describe the body as sent; the rebuilt response holds it decoded.
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _body_of(exc: openai.APIStatusError) -> bytes | str | None:
    try:
        return exc.response.content
    except httpx.ResponseNotRead:
        return exc.message
