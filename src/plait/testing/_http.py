"""A minimal HTTP/1.1 server connection built on ``asyncio.Protocol``.

Benchmarks run the simulator in its own process and it must never be the
bottleneck, so this skips everything a general server does that the OpenAI
wire format does not need: no tasks or coroutines per request, one header
scan, one ``write`` per reply. It reads ``Content-Length`` bodies only
(every OpenAI client sends them) and handles one request at a time per
connection; a pipelined request simply waits in the buffer until the one
before it has been answered. HTTP/1.0 clients get one reply per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    411: b"Length Required",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class Handler(Protocol):
    """Answers one parsed request by calling ``send``/``abort``/``defer`` on the connection."""

    def handle(self, conn: Connection, method: str, path: str, body: bytes) -> None: ...

    def http_error(self, status: int, message: str) -> bytes: ...


class Connection(asyncio.Protocol):
    """One client connection; lives in ``registry`` until it closes so shutdown can reach it."""

    __slots__ = (
        "_buffer",
        "_busy",
        "_handler",
        "_keep_alive",
        "_on_cancel",
        "_parsing",
        "_registry",
        "_timer",
        "_transport",
    )

    def __init__(self, handler: Handler, registry: set[Connection]) -> None:
        self._handler = handler
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False
        self._parsing = False
        self._keep_alive = True
        self._timer: asyncio.TimerHandle | None = None
        self._on_cancel: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self._cancel_pending()
        self._transport = None
        self._buffer.clear()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy and not self._parsing:
            self._parse()

    def send(self, status: int, body: bytes, headers: bytes = b"") -> None:
        """Write a complete JSON reply and go on to the next buffered request."""
        transport = self._transport
        if transport is None:
            return
        self._timer = None
        self._on_cancel = None
        if not self._keep_alive:
            headers += b"Connection: close\r\n"
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n%b"
            % (status, REASONS.get(status, b"Unknown"), len(body), headers, body)
        )
        self._next()

    def start_stream(self) -> bool:
        """Write the head of a 200 event stream (chunked); False if the client is gone."""
        transport = self._transport
        if transport is None:
            return False
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        return True

    def write_chunk(self, data: bytes) -> None:
        """Send ``data`` as one HTTP chunk of a stream begun with :meth:`start_stream`."""
        self._timer = None
        self._on_cancel = None
        if self._transport is not None and data:
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self) -> None:
        """Close the chunked body and go on to the next buffered request."""
        transport = self._transport
        if transport is None:
            return
        self._timer = None
        self._on_cancel = None
        transport.write(b"0\r\n\r\n")
        self._next()

    def _next(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if not self._keep_alive:
            transport.close()
            self._transport = None
            return
        self._busy = False
        if self._buffer and not self._parsing:
            self._parse()

    def abort(self) -> None:
        """Drop the connection without a reply, as a crashed upstream would."""
        self._timer = None
        self._on_cancel = None
        if self._transport is not None:
            self._transport.abort()

    def defer(
        self,
        delay: float,
        on_cancel: Callable[[], None],
        callback: Callable[..., None],
        *args: Any,
    ) -> None:
        """Run ``callback(*args)`` after ``delay``; if the client leaves first, run ``on_cancel``.

        The timer is held here, not in the handler, so a vanished client costs
        nothing more than one cancelled timer.
        """
        loop = asyncio.get_running_loop()
        self._on_cancel = on_cancel
        self._timer = loop.call_later(delay, callback, *args)

    def close(self) -> None:
        """Stop at once, cancelling any deferred reply (used at server shutdown)."""
        self._cancel_pending()
        if self._transport is not None:
            self._transport.abort()

    def _cancel_pending(self) -> None:
        timer, on_cancel = self._timer, self._on_cancel
        self._timer = None
        self._on_cancel = None
        if timer is not None:
            timer.cancel()
        if on_cancel is not None:
            on_cancel()

    def _parse(self) -> None:
        self._parsing = True
        try:
            while not self._busy and self._transport is not None and self._parse_one():
                pass
        finally:
            self._parsing = False

    def _parse_one(self) -> bool:
        """Dispatch one complete request from the buffer; False when more bytes are needed."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._refuse(431, "request head too large")
            return False
        lines = buffer[:end].decode("latin-1").split("\r\n")
        request_line = lines[0].split(" ")
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
            self._refuse(400, "malformed request line")
            return False
        method, target, version = request_line
        length = 0
        keep_alive = version == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    self._refuse(400, "invalid Content-Length")
                    return False
            elif name == "connection" and value.strip().lower() == "close":
                keep_alive = False
            elif name == "transfer-encoding":
                self._refuse(411, "chunked bodies are not supported; send Content-Length")
                return False
        if length < 0 or length > _MAX_BODY:
            self._refuse(413, "request body too large")
            return False
        start = end + 4
        if len(buffer) < start + length:
            return False
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        self._keep_alive = keep_alive
        self._busy = True
        self._handler.handle(self, method, target.partition("?")[0], body)
        return True

    def _refuse(self, status: int, message: str) -> None:
        self._keep_alive = False
        self._buffer.clear()
        self.send(status, self._handler.http_error(status, message))
