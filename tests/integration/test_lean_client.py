"""Both clients against real HTTP: plait's simulator, plus a tiny header-recording server.

Every case that should behave the same on either client runs on both: the
lean aiohttp client is the default, and the SDK client must be a drop-in
replacement for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil
import pytest
from aiohttp import web
from pydantic import BaseModel

from plait.clients import ChatRequest, LeanClient, LLMClient, OpenAIClient
from plait.errors import PermanentError, RateLimitError, ResponseValidationError, TransientError
from plait.testing import Simulator

KEY = "sk-integration-secret"
MakeClient = Callable[..., LeanClient | OpenAIClient]


class Ticket(BaseModel):
    title: str
    priority: int
    tags: list[str]


def ask(text: str = "hello", **fields: Any) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model="sim-model", **fields)


@pytest.fixture(params=[LeanClient, OpenAIClient], ids=["lean", "sdk"])
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[MakeClient]:
    """Builds clients of the parametrized class and closes them after the test."""
    cls: type[LeanClient | OpenAIClient] = request.param
    made: list[LeanClient | OpenAIClient] = []

    def make(base_url: str, api_key: str | None = KEY, **options: Any) -> LeanClient | OpenAIClient:
        client = cls(base_url, api_key, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def test_lean_client_satisfies_the_protocol() -> None:
    client = LeanClient("http://127.0.0.1:1/v1", KEY)
    assert isinstance(client, LLMClient)
    await client.aclose()


async def test_success(make_client: MakeClient) -> None:
    async with Simulator() as sim:
        client = make_client(sim.base_url)
        response = await client.complete(ask("what is up"))
        assert response.content == "ECHO: what is up"
        assert response.model == "sim-model"
        assert response.finish_reason == "stop"
        assert response.input_tokens > 0
        assert response.output_tokens > 0
        assert sim.stats().completed == 1


async def test_fields_and_options_reach_the_server(make_client: MakeClient) -> None:
    async with Simulator(reply=json.dumps) as sim:
        client = make_client(sim.base_url)
        request = ask(temperature=0.3, max_tokens=12, options={"top_p": 0.7, "seed": 5})
        seen = json.loads((await client.complete(request)).content)
        assert seen["model"] == "sim-model"
        assert seen["messages"] == request.messages
        assert (seen["temperature"], seen["max_tokens"]) == (0.3, 12)
        assert (seen["top_p"], seen["seed"]) == (0.7, 5)

        unset = json.loads((await client.complete(ask())).content)
        assert "temperature" not in unset
        assert "max_tokens" not in unset


@pytest.mark.parametrize("kind", ["503", "reset", "malformed", "stall"])
async def test_faults_are_transient(make_client: MakeClient, kind: str) -> None:
    async with Simulator(fault=lambda seq, body: kind, stall_seconds=5.0) as sim:
        client = make_client(sim.base_url, timeout=0.25)
        with pytest.raises(TransientError) as caught:
            await asyncio.wait_for(client.complete(ask()), timeout=5.0)
        assert not isinstance(caught.value, RateLimitError)
        if kind == "503":
            assert caught.value.status_code == 503
        if kind == "malformed":
            assert "malformed reply" in str(caught.value)


async def test_recovers_after_a_fault(make_client: MakeClient) -> None:
    async with Simulator(fault=lambda seq, body: "reset" if seq == 0 else None) as sim:
        client = make_client(sim.base_url)
        with pytest.raises(TransientError):
            await client.complete(ask())
        assert (await client.complete(ask("again"))).content == "ECHO: again"


async def test_injected_429_carries_retry_after(make_client: MakeClient) -> None:
    async with Simulator(fault=lambda seq, body: "429") as sim:
        client = make_client(sim.base_url)
        with pytest.raises(RateLimitError) as caught:
            await client.complete(ask())
        assert caught.value.retry_after == pytest.approx(0.05)


async def test_rate_limiter_429_carries_retry_after(make_client: MakeClient) -> None:
    async with Simulator(rate_limit=1, rate_window=60.0) as sim:
        client = make_client(sim.base_url)
        await client.complete(ask())
        with pytest.raises(RateLimitError) as caught:
            await client.complete(ask())
        assert caught.value.retry_after is not None
        assert 1.0 < caught.value.retry_after <= 60.0
        assert sim.stats().rate_limited == 1


async def test_structured_output(make_client: MakeClient) -> None:
    async with Simulator() as sim:
        client = make_client(sim.base_url)
        response = await client.complete(ask(response_format=Ticket))
        assert isinstance(response.parsed, Ticket)
        assert Ticket.model_validate_json(response.content) == response.parsed


async def test_structured_output_that_does_not_validate(make_client: MakeClient) -> None:
    async with Simulator(reply=lambda body: {"title": "t", "priority": "urgent"}) as sim:
        client = make_client(sim.base_url)
        with pytest.raises(ResponseValidationError, match="Ticket: priority"):
            await client.complete(ask(response_format=Ticket))


async def test_connection_refused_is_transient(make_client: MakeClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(TransientError):
        await client.complete(ask())


async def test_sequential_requests_reuse_one_connection(make_client: MakeClient) -> None:
    async with Simulator() as sim:
        client = make_client(sim.base_url)
        server_port = int(sim.base_url.rsplit(":", 1)[1].split("/")[0])
        local_ports: set[int] = set()
        for i in range(12):
            assert (await client.complete(ask(f"n{i}"))).content == f"ECHO: n{i}"
            open_ports = _client_ports_to(server_port)
            assert open_ports, "the connection should stay open between requests"
            local_ports |= open_ports
        assert len(local_ports) == 1, f"expected one kept-alive connection, saw {local_ports}"


async def test_concurrent_requests_all_succeed_within_the_connection_cap(
    make_client: MakeClient,
) -> None:
    async with Simulator(latency=0.05) as sim:
        client = make_client(sim.base_url, max_connections=50)
        replies = await asyncio.gather(*(client.complete(ask(f"q{i}")) for i in range(200)))
        assert [r.content for r in replies] == [f"ECHO: q{i}" for i in range(200)]
        stats = sim.stats()
        assert stats.completed == 200
        assert 1 < stats.peak_concurrency <= 50


async def test_headers_and_key(make_client: MakeClient) -> None:
    seen: list[dict[str, str]] = []
    async with _recording_server(seen) as base_url:
        keyed = make_client(base_url, KEY, headers={"X-Tenant": "blue"})
        await keyed.complete(ask())
        anonymous = make_client(base_url, None)
        await anonymous.complete(ask())
    assert seen[0]["authorization"] == f"Bearer {KEY}"
    assert seen[0]["x-tenant"] == "blue"
    assert seen[0]["content-type"].startswith("application/json")
    assert "authorization" not in seen[1]


async def test_key_stays_out_of_repr_and_errors(make_client: MakeClient) -> None:
    seen: list[dict[str, str]] = []
    async with _recording_server(seen, status=401) as base_url:
        client = make_client(base_url, KEY)
        assert KEY not in repr(client)
        with pytest.raises(PermanentError) as caught:
            await client.complete(ask())
    assert caught.value.status_code == 401
    assert "Incorrect API key provided: ***" in str(caught.value)
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value)
    assert KEY not in "".join(traceback.format_exception(caught.value))


def _client_ports_to(server_port: int) -> set[int]:
    """Local ports of this process's established TCP connections to ``server_port``."""
    return {
        conn.laddr.port
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == server_port and conn.status == "ESTABLISHED"
    }


@contextlib.asynccontextmanager
async def _recording_server(seen: list[dict[str, str]], status: int = 200) -> AsyncIterator[str]:
    """A one-route server that records request headers; answers 200, or 401 echoing the key."""

    async def handle(request: web.Request) -> web.Response:
        seen.append({name.lower(): value for name, value in request.headers.items()})
        await request.read()
        if status == 401:
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            error = {"error": {"message": f"Incorrect API key provided: {key}"}}
            return web.json_response(error, status=401)
        reply = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "rec",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        }
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()
