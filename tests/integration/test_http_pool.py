"""plait's own HTTP/1.1 client (``plait.clients._http``) byte by byte, through LeanClient.

The other integration tests talk to well-behaved servers (the simulator,
aiohttp). A hand-written client has to survive the rest too: framing split
across many TCP segments, chunk extensions and trailers, bodies ended by a
close, idle connections the server dropped, replies that are not HTTP at all,
TLS and IPv6. So most servers here are ``asyncio.start_server`` handlers that
write raw bytes, and every server counts its connections, which is how a test
sees whether the client reused one. All traffic stays on loopback, and every
wait has a deadline, so a regression fails a test instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import socket
import ssl
import traceback
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plait.clients import ChatRequest, LeanClient, _http
from plait.errors import PermanentError, RateLimitError, TransientError
from support import replies

KEY = "sk-pool-secret"
GUARD = 2.0
TLS_DIR = Path(__file__).resolve().parents[1] / "support" / "tls"
CERT = TLS_DIR / "cert.pem"


def ask(text: str = "hello") -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model="m")


def completion(content: str) -> bytes:
    """A chat.completion body whose answer is ``content``, as bytes to write."""
    return json.dumps(replies.completion(content)).encode()


def head(*fields: str, status: str = "200 OK", version: str = "HTTP/1.1") -> bytes:
    """A status line and header fields, ending with the blank line."""
    return "\r\n".join([f"{version} {status}", *fields, "", ""]).encode("latin-1")


def reply(body: bytes, *fields: str, version: str = "HTTP/1.1") -> bytes:
    """A whole JSON reply framed by Content-Length."""
    return (
        head(
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *fields,
            version=version,
        )
        + body
    )


def chunked(
    body: bytes, size: int, *, extension: str = "", trailers: tuple[str, ...] = ()
) -> bytes:
    """``body`` in chunks of ``size`` bytes (hex sizes, optional extensions and trailers)."""
    out = bytearray()
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += f"{len(piece):X}{extension}\r\n".encode() + piece + b"\r\n"
    out += f"0{extension}\r\n".encode()
    out += "".join(f"{line}\r\n" for line in trailers).encode() + b"\r\n"
    return bytes(out)


def echoed(body: bytes) -> str:
    """What the echo servers answer: the request's user message, reversed."""
    text: str = json.loads(body)["messages"][0]["content"]
    return text[::-1]


@dataclass
class Link:
    """One accepted connection, from the server's side."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    wire: Wire

    async def request(self) -> bytes | None:
        """The next request's body, or None once the client has closed the connection."""
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = raw.decode("latin-1").split("\r\n")
        self.wire.heads.append(lines)
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        return await self.reader.readexactly(int(fields["content-length"]))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def trickle(self, data: bytes, step: int = 1) -> None:
        """Send ``data`` ``step`` bytes at a time, letting the client read each piece."""
        for start in range(0, len(data), step):
            self.writer.write(data[start : start + step])
            await self.writer.drain()
            await asyncio.sleep(0)

    async def until_closed(self) -> None:
        """Wait for the client to close this connection (reading, and dropping, what comes)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.wire.disconnected.set()


Handle = Callable[[Link], Awaitable[None]]


@dataclass
class Wire:
    """A raw-bytes loopback server that counts connections: the client's reuse made visible."""

    handle: Handle
    base_url: str = ""
    accepted: int = 0
    open: int = 0
    peak: int = 0
    heads: list[list[str]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        link = Link(self.accepted, reader, writer, self)
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.handle(link)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the test is over; a cancelled callback task would be logged as an error
        finally:
            self.open -= 1
            writer.close()
            self.ended.set()
            self.tasks.discard(task)


@contextlib.asynccontextmanager
async def wire(
    handle: Handle, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> AsyncIterator[Wire]:
    """Serve ``handle`` on a free port of ``host``; yields the server, its ``/v1`` URL set."""
    server_wire = Wire(handle)
    server = await asyncio.start_server(server_wire.serve, host, 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    name = f"[{host}]" if ":" in host else host
    server_wire.base_url = f"{'https' if tls else 'http'}://{name}:{port}/v1"
    try:
        yield server_wire
    finally:
        server.close()
        for task in list(server_wire.tasks):
            task.cancel()
        await asyncio.wait_for(server.wait_closed(), GUARD)


def answering(answer: Callable[[bytes], bytes], *, close: bool = False) -> Handle:
    """A handler answering every request on a connection; ``close`` ends it after one."""

    async def handle(link: Link) -> None:
        while (body := await link.request()) is not None:
            await link.send(answer(body))
            if close:
                return

    return handle


def echo(body: bytes) -> bytes:
    return reply(completion(echoed(body)))


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., LeanClient]]:
    """Builds LeanClients with a short timeout, closing them after the test."""
    made: list[LeanClient] = []

    def build(base_url: str, **options: Any) -> LeanClient:
        options.setdefault("timeout", GUARD)
        client = LeanClient(base_url, KEY, **options)
        made.append(client)
        return client

    yield build
    for client in made:
        await client.aclose()


async def complete(client: LeanClient, text: str = "hello") -> str:
    return (await asyncio.wait_for(client.complete(ask(text)), GUARD)).content


# -- framing ------------------------------------------------------------------------------


async def test_a_chunked_reply_sent_a_byte_at_a_time_with_extensions_and_trailers(
    make: Callable[..., LeanClient],
) -> None:
    """Every chunk-size line carries an extension and the last chunk trailer fields;
    the body must come out exact, and the connection must be left at the start of
    the next reply (the second request reads its own answer on the same connection)."""

    async def handle(link: Link) -> None:
        while (body := await link.request()) is not None:
            content = completion(echoed(body) + " " + "é" * 40)
            framed = chunked(
                content, 7, extension=';ext=1;name="a b"', trailers=("X-T: 1", "X-U: 2")
            )
            await link.trickle(
                head("Content-Type: application/json", "Transfer-Encoding: chunked") + framed
            )

    async with wire(handle) as server:
        client = make(server.base_url)
        assert await complete(client, "abc") == "cba " + "é" * 40
        assert await complete(client, "xyz") == "zyx " + "é" * 40
    assert server.accepted == 1


async def test_a_reply_framed_by_close_is_read_whole_and_its_connection_dropped(
    make: Callable[..., LeanClient],
) -> None:
    """No Content-Length, no chunking: the body is everything until the server closes,
    in many reads; that connection is spent, so the next request needs a new one."""
    big = "x" * 300_000

    async def handle(link: Link) -> None:
        if await link.request() is not None:
            await link.send(head("Content-Type: application/json") + completion(big))

    async with wire(handle) as server:
        client = make(server.base_url)
        assert await complete(client) == big
        assert await complete(client) == big
    assert server.accepted == 2


async def test_interim_1xx_replies_are_skipped_not_taken_for_the_answer(
    make: Callable[..., LeanClient],
) -> None:
    """A 100 Continue or 103 Early Hints comes before the real reply. Taking it for
    the reply would fail this call and leave the real one on the connection, where
    the next request would read it as its own answer."""

    async def handle(link: Link) -> None:
        while (body := await link.request()) is not None:
            interim = head(status="100 Continue") + head(
                "Link: </a>; rel=preload", status="103 Early Hints"
            )
            await link.send(interim + echo(body))

    async with wire(handle) as server:
        client = make(server.base_url)
        assert await complete(client, "first") == "tsrif"
        assert await complete(client, "second") == "dnoces"
    assert server.accepted == 1


# -- keep-alive ---------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(make: Callable[..., LeanClient]) -> None:
    async with wire(answering(echo)) as server:
        client = make(server.base_url)
        for i in range(5):
            assert await complete(client, f"n{i}") == f"{i}n"
    assert (server.accepted, len(server.heads)) == (1, 5)


@pytest.mark.parametrize(
    ("version", "connection", "connections"),
    [
        ("HTTP/1.1", "Connection: close", 2),
        ("HTTP/1.0", "X-Nothing: 1", 2),
        ("HTTP/1.0", "Connection: keep-alive", 1),
        ("HTTP/1.1", "Connection: keep-alive", 1),
    ],
)
async def test_the_reply_decides_whether_its_connection_is_kept(
    make: Callable[..., LeanClient], version: str, connection: str, connections: int
) -> None:
    """The server keeps every connection open and would answer on it, so only the
    client's reading of the reply's version and Connection header decides reuse."""

    def answer(body: bytes) -> bytes:
        return reply(completion(echoed(body)), connection, version=version)

    async with wire(answering(answer)) as server:
        client = make(server.base_url)
        assert await complete(client, "ab") == "ba"
        assert await complete(client, "cd") == "dc"
    assert server.accepted == connections


async def test_an_idle_connection_the_server_closed_is_not_reused(
    make: Callable[..., LeanClient],
) -> None:
    """The server closes after each reply without saying so (no Connection: close)."""
    async with wire(answering(echo, close=True)) as server:
        client = make(server.base_url)
        assert await complete(client, "ab") == "ba"
        await asyncio.wait_for(server.ended.wait(), GUARD)
        await asyncio.sleep(0.01)  # the close reaches the client's side
        assert await complete(client, "cd") == "dc"
    assert server.accepted == 2


async def test_a_reused_connection_dropped_unanswered_fails_once_and_is_never_resent(
    make: Callable[..., LeanClient],
) -> None:
    """The server reads a request on a kept-alive connection and hangs up without
    a reply. From the client that looks just like the keep-alive race (the server
    closed the idle connection as the request left), but the server may have done
    the work: a silent resend would be a request that usage, budgets and the
    retry policy never see. So it fails as a TransientError, sent once, and the
    retry policy decides; the next request goes out on a fresh connection."""

    async def handle(link: Link) -> None:
        body = await link.request()
        if body is not None:
            await link.send(echo(body))
            if link.number == 0:
                await link.request()  # the second request: read, then hang up unanswered
                return
            await answering(echo)(link)

    async with wire(handle) as server:
        client = make(server.base_url)
        assert await complete(client, "ab") == "ba"
        with pytest.raises(TransientError, match="closed the connection before replying"):
            await complete(client, "cd")
        assert len(server.heads) == 2
        assert await complete(client, "ef") == "fe"
    assert server.accepted == 2
    assert len(server.heads) == 3


async def test_a_fresh_connection_closed_unanswered_fails_without_a_resend(
    make: Callable[..., LeanClient],
) -> None:
    """On a new connection too, a hang-up is a TransientError for the retry
    policy, sent exactly once."""

    async def handle(link: Link) -> None:
        await link.request()

    async with wire(handle) as server:
        client = make(server.base_url)
        with pytest.raises(TransientError, match="closed the connection before replying") as caught:
            await complete(client)
    assert server.url in str(caught.value)
    assert (server.accepted, len(server.heads)) == (1, 1)


async def test_a_connection_in_use_when_the_client_closes_is_closed_not_pooled(
    make: Callable[..., LeanClient],
) -> None:
    """``aclose`` closes the idle connections at once; one whose reply is still on
    its way is closed when that reply is read, never parked in a pool that nobody
    will close again (it would stay open until the process ends)."""
    asked, answered = asyncio.Event(), asyncio.Event()

    async def handle(link: Link) -> None:
        body = await link.request()
        assert body is not None
        asked.set()
        await answered.wait()
        await link.send(echo(body))
        await link.until_closed()

    async with wire(handle) as server:
        client = make(server.base_url)
        call = asyncio.ensure_future(complete(client, "ab"))
        await asyncio.wait_for(asked.wait(), GUARD)
        await client.aclose()
        answered.set()
        assert await asyncio.wait_for(call, GUARD) == "ba"
        await asyncio.wait_for(server.disconnected.wait(), GUARD)


async def test_an_idle_connection_past_the_expiry_is_not_reused(
    make: Callable[..., LeanClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_http, "_IDLE_EXPIRY", 0.05)
    async with wire(answering(echo)) as server:
        client = make(server.base_url)
        assert await complete(client, "ab") == "ba"
        assert await complete(client, "cd") == "dc"  # within the expiry: reused
        assert server.accepted == 1
        await asyncio.sleep(0.1)
        assert await complete(client, "ef") == "fe"
    assert server.accepted == 2


# -- malformed replies --------------------------------------------------------------------

GOOD = completion("fine")
CORRUPT_GZIP = head("Content-Encoding: gzip", "Content-Length: 12") + b"not gzip at "
TRUNCATED_GZIP = gzip.compress(GOOD)[:-12]
BIG_HEADER = head("X-Big: " + "a" * 70_000)
MANY_HEADERS = head(*(f"X-H-{i}: {'b' * 40}" for i in range(2000)))

# name: (bytes sent, whether the server then closes, what the error must say)
MALFORMED: dict[str, tuple[bytes, bool, str]] = {
    "garbage status line": (b"HELLO THERE\r\n\r\n", False, "not an HTTP/1.x status line"),
    "status without a code": (b"HTTP/1.1 OK\r\n\r\n", False, "not an HTTP/1.x status line"),
    "a non-ascii digit in the status": (
        b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 0\r\n\r\n",
        False,
        "not an HTTP/1.x status line",
    ),
    "header line without a colon": (
        b"HTTP/1.1 200 OK\r\nContent-Length 4\r\n\r\n{}{}",
        False,
        "malformed header line",
    ),
    "Content-Length not a number": (head("Content-Length: abc"), False, "bad Content-Length"),
    "Content-Length negative": (head("Content-Length: -1"), False, "bad Content-Length"),
    "Content-Length a non-ascii digit": (
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}",
        False,
        "bad Content-Length",
    ),
    "two different Content-Lengths": (
        head("Content-Length: 2", "Content-Length: 3") + b"{}",
        False,
        "bad Content-Length",
    ),
    "chunk size not hex": (
        head("Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n",
        False,
        "bad chunk size",
    ),
    "chunk size negative": (
        head("Transfer-Encoding: chunked") + b"-5\r\n{}\r\n0\r\n\r\n",
        False,
        "bad chunk size",
    ),
    "chunk size empty": (head("Transfer-Encoding: chunked") + b"\r\n", False, "bad chunk size"),
    "chunk without its CRLF": (
        head("Transfer-Encoding: chunked") + b"2\r\n{}XX0\r\n\r\n",
        False,
        "does not end with CRLF",
    ),
    "closed mid-body": (
        head("Content-Length: 100") + GOOD[:10],
        True,
        "closed the connection mid-body",
    ),
    "closed mid-chunk": (
        head("Transfer-Encoding: chunked") + b"64\r\n" + GOOD[:10],
        True,
        "closed the connection mid-chunk",
    ),
    "closed before the last chunk": (
        head("Transfer-Encoding: chunked") + chunked(GOOD, 16)[:-5],
        True,
        "closed the connection mid-body",
    ),
    "closed mid-headers": (b"HTTP/1.1 200 OK\r\nContent-Le", True, "mid-headers"),
    "closed after a 100 Continue": (head(status="100 Continue"), True, "mid-headers"),
    "corrupt gzip": (CORRUPT_GZIP, False, "the compressed body is corrupt"),
    "truncated gzip": (
        head("Content-Encoding: gzip", f"Content-Length: {len(TRUNCATED_GZIP)}") + TRUNCATED_GZIP,
        False,
        "compressed body ends early",
    ),
    "unsupported Content-Encoding": (
        head("Content-Encoding: br", "Content-Length: 2") + b"{}",
        False,
        "unsupported Content-Encoding 'br'",
    ),
    "one header over 64 KiB": (BIG_HEADER, False, "reply headers over 65536 bytes"),
    "headers over 64 KiB in all": (MANY_HEADERS, False, "reply headers over 65536 bytes"),
}


@pytest.mark.parametrize("fault", list(MALFORMED))
async def test_a_malformed_reply_is_transient_names_the_url_and_spends_its_connection(
    make: Callable[..., LeanClient], fault: str
) -> None:
    """The first connection's reply is broken; after it the server answers well on
    every connection, the first included, so a second request succeeds either way,
    and only the connection count shows the broken connection was never reused."""
    data, close, detail = MALFORMED[fault]

    async def handle(link: Link) -> None:
        if link.number == 0:
            if await link.request() is None:
                return
            await link.send(data)
            if close:
                return
        await answering(echo)(link)

    async with wire(handle) as server:
        client = make(server.base_url)
        with pytest.raises(TransientError) as caught:
            await complete(client)
        assert await complete(client, "again") == "niaga"
    message = str(caught.value)
    assert not isinstance(caught.value, RateLimitError)
    assert server.url in message
    assert detail in message
    assert KEY not in message
    assert server.accepted == 2


# -- request headers ----------------------------------------------------------------------

SECRET = "sk-live-0123456789"


@pytest.mark.parametrize(
    ("api_key", "headers", "expected"),
    [
        (SECRET + "\r\nX-Evil: 1", {}, "header 'Authorization': its value holds a line break"),
        (SECRET + "\nX-Evil: 1", {}, "header 'Authorization': its value holds a line break"),
        (SECRET + "\r", {}, "header 'Authorization': its value holds a line break"),
        (None, {"api-key": SECRET + "\r\nX-Evil: 1"}, "header 'api-key': its value holds"),
        (None, {"X-A\r\nX-Evil": SECRET}, "not a valid header name"),
        (None, {"X-A:": SECRET}, "not a valid header name"),
        (SECRET + "\u2026", {}, "header 'Authorization': its value holds a character"),
        (None, {"api-key": "\u20ac" + SECRET}, "header 'api-key': its value holds a character"),
    ],
)
def test_a_header_that_would_break_the_request_is_refused_without_quoting_it(
    api_key: str | None, headers: dict[str, str], expected: str
) -> None:
    """A line break would let a value start a header of its own (or end the block);
    a character Latin-1 cannot carry cannot be sent at all. Either is refused when
    the client is built, and the error never holds the value: it may be a key."""
    with pytest.raises(ValueError, match=re.escape(expected)) as caught:
        LeanClient("http://127.0.0.1:1/v1", api_key, headers=headers)
    error = caught.value
    shown = "".join(traceback.format_exception(error)) + repr(error) + repr(error.args)
    chained = [error.__cause__, error.__context__]
    shown += "".join(repr(link) for link in chained if link is not None)
    assert SECRET not in shown
    assert "X-Evil" not in shown


# -- compression --------------------------------------------------------------------------

ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_compressed_reply_is_decoded_and_its_connection_kept(
    make: Callable[..., LeanClient], encoding: str, framing: str
) -> None:
    async def handle(link: Link) -> None:
        while (body := await link.request()) is not None:
            packed = ENCODINGS[encoding](completion(echoed(body) * 200))
            fields = ("Content-Type: application/json", f"Content-Encoding: {encoding}")
            if framing == "length":
                await link.send(head(*fields, f"Content-Length: {len(packed)}") + packed)
            else:
                await link.trickle(
                    head(*fields, "Transfer-Encoding: chunked") + chunked(packed, 5), 3
                )

    async with wire(handle) as server:
        client = make(server.base_url)
        assert await complete(client, "ab") == "ba" * 200
        assert await complete(client, "cd") == "dc" * 200
    assert server.accepted == 1
    assert "accept-encoding: gzip, deflate" in [line.lower() for line in server.heads[0]]


# -- the connection cap and cancellation --------------------------------------------------


async def test_max_connections_holds_under_concurrent_load(make: Callable[..., LeanClient]) -> None:
    async def slow(link: Link) -> None:
        while (body := await link.request()) is not None:
            await asyncio.sleep(0.03)
            await link.send(echo(body))

    async with wire(slow) as server:
        client = make(server.base_url, max_connections=2)
        texts = [f"q{i}" for i in range(10)]
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.complete(ask(text)) for text in texts)), GUARD
        )
    assert [r.content for r in replies] == [text[::-1] for text in texts]
    assert server.peak == 2
    assert server.accepted == 2


async def test_a_cancel_mid_reply_closes_that_connection_and_the_pool_carries_on(
    make: Callable[..., LeanClient],
) -> None:
    started = asyncio.Event()

    async def handle(link: Link) -> None:
        if link.number == 0:
            if await link.request() is not None:
                await link.send(head("Content-Length: 1000") + b'{"id": ')
                started.set()
                await link.until_closed()
            return
        await answering(echo)(link)

    async with wire(handle) as server:
        client = make(server.base_url, max_connections=1)
        task = asyncio.create_task(client.complete(ask()))
        await asyncio.wait_for(started.wait(), GUARD)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, GUARD)
        await asyncio.wait_for(server.disconnected.wait(), GUARD)
        assert await complete(client, "next") == "txen"
    assert server.accepted == 2


async def test_cancels_at_every_stage_never_leak_the_connection_cap(
    make: Callable[..., LeanClient],
) -> None:
    """With one connection allowed, any cancel that kept its permit would leave the
    last request waiting forever. Cancels land while waiting for the permit, while
    waiting for the reply's head, and part-way through a body."""
    stall = True

    async def handle(link: Link) -> None:
        while (body := await link.request()) is not None:
            if stall:
                await link.send(head("Content-Length: 500") + b"{")
                await link.until_closed()
                return
            await link.send(echo(body))

    async with wire(handle) as server:
        client = make(server.base_url, max_connections=1)
        for delay in (0.0, 0.001, 0.005, 0.02):
            tasks = [asyncio.create_task(client.complete(ask())) for _ in range(4)]
            await asyncio.sleep(delay)
            for task in tasks:
                task.cancel()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD)
            assert all(isinstance(result, asyncio.CancelledError) for result in results)
        stall = False
        assert await complete(client, "through") == "hguorht"


# -- streaming ----------------------------------------------------------------------------

DELTAS = ["The ", "quick ", "brown ", "fox ", "jumps ", "é✓"]


def event_stream(deltas: list[str]) -> bytes:
    """An OpenAI stream: one chunk per delta, a finish chunk with usage, then [DONE]."""

    def chunk(delta: dict[str, str], finish: str | None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {"id": "s", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        return f"data: {json.dumps({**data, **extra})}\r\n\r\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": text}, None) for text in deltas]
    usage = {"prompt_tokens": 4, "completion_tokens": len(deltas), "total_tokens": 4 + len(deltas)}
    events += [chunk({}, "stop", usage=usage), "data: [DONE]\r\n\r\n"]
    return "".join(events).encode()


async def test_a_stream_split_across_chunks_arrives_in_order_and_its_connection_is_reused(
    make: Callable[..., LeanClient],
) -> None:
    """Chunks of 11 bytes cut events, lines, a CRLF and a multi-byte character apart."""

    async def handle(link: Link) -> None:
        while (body := await link.request()) is not None:
            if json.loads(body).get("stream"):
                fields = (
                    "Content-Type: text/event-stream; charset=utf-8",
                    "Transfer-Encoding: chunked",
                )
                await link.trickle(head(*fields) + chunked(event_stream(DELTAS), 11), 5)
            else:
                await link.send(echo(body))

    async with wire(handle) as server:
        client = make(server.base_url)
        seen: list[str] = []
        response = await asyncio.wait_for(client.stream(ask(), seen.append), GUARD)
        assert seen == DELTAS
        assert response.content == "".join(DELTAS)
        assert (response.finish_reason, response.output_tokens) == ("stop", len(DELTAS))
        assert await complete(client, "after") == "retfa"
    assert server.accepted == 1


# -- TLS ----------------------------------------------------------------------------------


def server_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, TLS_DIR / "key.pem")
    return context


async def test_https_to_a_trusted_certificate(
    make: Callable[..., LeanClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE is how a private CA is trusted; connections stay alive over TLS too."""
    monkeypatch.setenv("SSL_CERT_FILE", str(CERT))
    async with wire(answering(echo), tls=server_tls()) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        client = make(server.base_url)
        assert await complete(client, "ab") == "ba"
        assert await complete(client, "cd") == "dc"
    assert server.accepted == 1


@pytest.mark.parametrize("call", ["complete", "stream"])
async def test_https_to_an_untrusted_certificate_is_permanent(
    make: Callable[..., LeanClient], monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A certificate that does not verify now will not verify on a retry either."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with wire(answering(echo), tls=server_tls()) as server:
        client = make(server.base_url)
        seen: list[str] = []
        attempt = (
            client.complete(ask()) if call == "complete" else client.stream(ask(), seen.append)
        )
        with pytest.raises(PermanentError) as caught:
            await asyncio.wait_for(attempt, GUARD)
    message = str(caught.value)
    assert server.url in message
    assert "certificate could not be verified" in message
    assert "SSL_CERT_FILE" in message
    assert server.heads == []
    assert seen == []


# -- IPv6 ---------------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# Defined only where ::1 can be bound (it can on the machine this was written on);
# elsewhere the test is left out rather than reported as skipped.
if _has_ipv6_loopback():

    async def test_an_ipv6_literal_base_url(make: Callable[..., LeanClient]) -> None:
        async with wire(answering(echo), host="::1") as server:
            port = server.base_url.rsplit(":", 1)[1].split("/")[0]
            assert server.base_url == f"http://[::1]:{port}/v1"
            client = make(server.base_url)
            assert await complete(client, "v6") == "6v"
        assert server.heads[0][0] == "POST /v1/chat/completions HTTP/1.1"
        assert f"Host: [::1]:{port}" in server.heads[0]
