"""Replies that must not pass for answers, over real HTTP on loopback, on both clients.

Each fault is one a real endpoint, or something standing in front of it, has
produced: a 200 whose message has no content, a gateway's HTML page, a body
far too large to hold, a redirect to another host. The simulator always
answers well-formed completions, so these tests run small aiohttp servers of
their own on 127.0.0.1; every server stops when its ``async with`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from plait import LLMInference
from plait.clients import ChatRequest, LeanClient, OpenAIClient
from plait.errors import ConfigError, PermanentError, ResponseTooLargeError, TransientError
from plait.resources import ResourceManager
from support.replies import completion

KEY = "sk-fault-secret"
GUARD = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLIENTS: dict[str, type[LeanClient | OpenAIClient]] = {"lean": LeanClient, "openai": OpenAIClient}


def ask(text: str = "hello") -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model="m")


@dataclass
class Seen:
    """What one fault server was sent: each request's method, path, headers and body."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    async def record(self, request: web.Request) -> None:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": {name.lower(): value for name, value in request.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
        )


@contextlib.asynccontextmanager
async def serve(handler: Handler, *, any_route: bool = False) -> AsyncIterator[str]:
    """Serve ``handler`` on a free loopback port; yields the ``/v1`` base URL."""
    app = web.Application()
    if any_route:
        app.router.add_route("*", "/{tail:.*}", handler)
    else:
        app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@pytest.fixture(params=list(CLIENTS))
async def client_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def make_client(client_name: str) -> AsyncIterator[Callable[..., LeanClient | OpenAIClient]]:
    made: list[LeanClient | OpenAIClient] = []

    def make(base_url: str, **options: Any) -> LeanClient | OpenAIClient:
        client = CLIENTS[client_name](base_url, KEY, timeout=GUARD, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


# -- 1. a reply without what was asked is transient --------------------------------------

NOT_AN_ANSWER: dict[str, tuple[Callable[[], web.Response], str]] = {
    "null content": (
        lambda: web.json_response(completion(None)),
        r"content is null and it has no tool calls",
    ),
    "no choices": (
        lambda: web.json_response({"id": "c", "object": "chat.completion", "model": "m"}),
        r"the body has no 'choices'",
    ),
    "empty choices": (
        lambda: web.json_response({**completion("x"), "choices": []}),
        r"'choices' is empty",
    ),
    "choice without a message": (
        lambda: web.json_response({**completion("x"), "choices": [{"index": 0}]}),
        r"the first choice has no 'message'",
    ),
    "html with status 200": (
        lambda: web.Response(
            text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"
        ),
        r"the body is not JSON \(text/html[^)]*\): <html>",
    ),
}


@pytest.mark.parametrize("fault", list(NOT_AN_ANSWER))
async def test_a_reply_that_carries_no_answer_is_transient(
    make_client: Callable[..., LeanClient | OpenAIClient], fault: str
) -> None:
    reply, names = NOT_AN_ANSWER[fault]

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return reply()

    async with serve(handle) as base_url:
        with pytest.raises(TransientError, match=f"^malformed reply: .*{names}") as caught:
            await asyncio.wait_for(make_client(base_url).complete(ask()), GUARD)
    assert KEY not in str(caught.value)


async def test_an_empty_string_is_still_an_answer(
    make_client: Callable[..., LeanClient | OpenAIClient],
) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(completion(""))

    async with serve(handle) as base_url:
        response = await make_client(base_url).complete(ask())
    assert response.content == ""


async def test_a_refusal_of_a_plain_request_is_final_not_an_empty_answer(
    make_client: Callable[..., LeanClient | OpenAIClient],
) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(completion(None, refusal="I can't help with that."))

    async with serve(handle) as base_url:
        with pytest.raises(PermanentError, match="refused to answer: I can't help with that"):
            await make_client(base_url).complete(ask())


async def test_a_null_content_reply_is_retried_and_never_cached(
    client_name: str, tmp_path: Path
) -> None:
    """Through the real engine, resource manager and response cache: the first
    reply has no content, the retry gets the answer, and only the answer is stored."""
    seen = Seen()

    async def handle(request: web.Request) -> web.Response:
        await seen.record(request)
        return web.json_response(completion(None if len(seen.requests) == 1 else "the answer"))

    async with serve(handle) as base_url:
        config = {
            "llm": {"model": "m", "base_url": base_url, "api_key": KEY, "client": client_name}
        }
        first = ResourceManager(config)
        try:
            module = LLMInference("llm").bind(
                resources=first, cache=tmp_path / "cache", task_retry_delay=0.0
            )
            assert await asyncio.wait_for(module("q"), GUARD) == "the answer"
            assert len(seen.requests) == 2
            assert first.usage()["llm"].retries == 1
        finally:
            await first.aclose()

        # A new manager reads only what the cache file holds.
        second = ResourceManager(config)
        try:
            module = LLMInference("llm").bind(resources=second, cache=tmp_path / "cache")
            assert await asyncio.wait_for(module("q"), GUARD) == "the answer"
            assert len(seen.requests) == 2
            assert second.usage()["llm"].cache_hits == 1
        finally:
            await second.aclose()


# -- 2. replies are size-capped -----------------------------------------------------------

CAP = 64 * 1024
BODY = 1024 * 1024
CHUNK = 16 * 1024


@dataclass
class Sender:
    """A server that sends ``BODY`` bytes of JSON whitespace slowly, noting how far it got."""

    declare_length: bool
    sent: int = 0
    finished: bool = False
    cut_off: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.declare_length:
            response.content_length = BODY
        try:
            await response.prepare(request)
            while self.sent < BODY:
                await response.write(b" " * CHUNK)
                self.sent += CHUNK
                await asyncio.sleep(0.02)
            self.finished = True
        except ConnectionError:
            self.cut_off = True
        finally:
            self.done.set()
        return response


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
async def test_a_reply_over_the_cap_is_refused_before_it_is_all_sent(
    make_client: Callable[..., LeanClient | OpenAIClient], declare_length: bool
) -> None:
    sender = Sender(declare_length)
    async with serve(sender.handle) as base_url:
        client = make_client(base_url, max_response_bytes=CAP)
        with pytest.raises(ResponseTooLargeError) as caught:
            await asyncio.wait_for(client.complete(ask()), GUARD)
        assert not sender.finished, "the client waited for the whole body"
        await asyncio.wait_for(sender.done.wait(), GUARD)
    message = str(caught.value)
    assert f"{base_url}/chat/completions" in message
    assert f"max_response_bytes ({CAP})" in message
    assert sender.cut_off, "the client should close the connection, not drain it"
    assert sender.sent < BODY


async def test_a_compressed_reply_is_capped_by_its_decoded_size(
    make_client: Callable[..., LeanClient | OpenAIClient],
) -> None:
    """A few kilobytes of gzip that inflate to a mebibyte must not get past a 64 KiB cap."""
    packed = gzip.compress(b" " * BODY)
    assert len(packed) < CAP

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return web.Response(body=packed, headers=headers)

    async with serve(handle) as base_url:
        with pytest.raises(ResponseTooLargeError, match=r"max_response_bytes \(65536\)"):
            await make_client(base_url, max_response_bytes=CAP).complete(ask())


async def test_a_reply_under_the_cap_is_read(
    make_client: Callable[..., LeanClient | OpenAIClient],
) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(completion("x" * (CAP // 2)))

    async with serve(handle) as base_url:
        response = await make_client(base_url, max_response_bytes=CAP).complete(ask())
    assert response.content == "x" * (CAP // 2)


async def test_an_error_body_over_the_cap_is_refused_too(
    make_client: Callable[..., LeanClient | OpenAIClient],
) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {"message": "x" * (2 * CAP)}}, status=500)

    async with serve(handle) as base_url:
        with pytest.raises(ResponseTooLargeError):
            await make_client(base_url, max_response_bytes=CAP).complete(ask())


# -- 3. redirects are not followed ------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_origin_is_not_followed(
    make_client: Callable[..., LeanClient | OpenAIClient], status: int
) -> None:
    """Two ports are two origins; the second must never see the prompt or the key."""
    elsewhere = Seen()
    origin = Seen()

    async def record_elsewhere(request: web.Request) -> web.Response:
        await elsewhere.record(request)
        return web.json_response(completion("stolen"))

    async with serve(record_elsewhere, any_route=True) as other_url:
        target = f"{other_url}/chat/completions"

        async def redirect(request: web.Request) -> web.Response:
            await origin.record(request)
            return web.Response(status=status, headers={"Location": target})

        async with serve(redirect) as base_url:
            client = make_client(base_url, headers={"api-key": KEY})
            with pytest.raises(PermanentError) as caught:
                await asyncio.wait_for(client.complete(ask("the secret prompt")), GUARD)
    assert elsewhere.requests == []
    assert len(origin.requests) == 1
    assert origin.requests[0]["headers"]["api-key"] == KEY
    assert caught.value.status_code == status
    assert f"HTTP {status}" in str(caught.value)
    assert target in str(caught.value)
    assert "does not follow redirects" in str(caught.value)


async def test_a_same_origin_redirect_is_not_followed_either(
    make_client: Callable[..., LeanClient | OpenAIClient],
) -> None:
    seen = Seen()

    async def handle(request: web.Request) -> web.Response:
        await seen.record(request)
        if request.path == "/v1/chat/completions":
            return web.Response(status=307, headers={"Location": "/v2/chat/completions"})
        return web.json_response(completion("moved"))

    async with serve(handle, any_route=True) as base_url:
        with pytest.raises(PermanentError, match=r"HTTP 307.*/v2/chat/completions"):
            await make_client(base_url).complete(ask())
    assert [request["path"] for request in seen.requests] == ["/v1/chat/completions"]
    assert json.loads(seen.requests[0]["body"])["messages"] == ask().messages


async def test_an_injected_http_client_that_follows_redirects_is_refused() -> None:
    async with httpx.AsyncClient(follow_redirects=True) as http:
        with pytest.raises(ConfigError, match="follow_redirects=False"):
            OpenAIClient("http://127.0.0.1:1/v1", KEY, http_client=http)


@pytest.mark.parametrize("client_kind", ["lean", "openai"])
async def test_the_endpoint_config_sets_the_cap_through_the_resource_manager(
    client_kind: str,
) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(completion("x" * CAP))

    async with serve(handle) as base_url:
        manager = ResourceManager(
            {
                "capped": {
                    "model": "m",
                    "base_url": base_url,
                    "api_key": "k",
                    "client": client_kind,
                    "max_response_bytes": CAP // 2,
                    "max_retries": 0,
                }
            }
        )
        try:
            with pytest.raises(ResponseTooLargeError, match=rf"max_response_bytes \({CAP // 2}\)"):
                await asyncio.wait_for(LLMInference("capped").bind(manager)("hi"), GUARD)
        finally:
            await manager.aclose()
