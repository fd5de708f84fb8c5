"""A small HTTP/1.1 client for one endpoint: keep-alive POSTs over asyncio streams.

Why not aiohttp: at low latency the HTTP stack, not the network, bounds a
batch. aiohttp spends about 280 us of CPU per request here and 0.5 s on its
own import (0.3 s from bytecode); these few functions need about 100 us and the standard library
(design_docs/performance.md has the measurements). The scope is what the
chat-completions API uses and no more: POST with a known length, replies
framed by ``Content-Length``, chunked transfer or connection close, gzip or
deflate bodies, TLS through :mod:`ssl`, and a pool of idle connections. No
redirects, cookies, proxies or HTTP/2 (aiohttp without ``trust_env`` used no
proxy either).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

__all__ = ["HttpPool", "HttpProtocolError", "HttpResponse"]

# An idle connection older than this is closed rather than reused: servers
# drop idle keep-alive connections after a few seconds (uvicorn after 5), and
# a request written into one that is closing fails for nothing.
_IDLE_EXPIRY = 4.0
_MAX_HEAD_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024
_NO_BODY = frozenset({204, 304})
# zlib's window-bits flag for "a gzip or a zlib header, whichever it finds".
_GZIP_OR_ZLIB = 47


class HttpProtocolError(ConnectionError):
    """The server's bytes are not an HTTP/1.1 reply this client can read.

    A ``ConnectionError`` because, like a reset, it says nothing about the
    request: the same request to a healthy server would have worked.
    """


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (
            now - self.idle_since < _IDLE_EXPIRY
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """POSTs to one URL over at most ``max_connections`` kept-alive connections.

    Build it anywhere; connections are opened inside the loop that sends.
    A caller builds each set of headers it sends into bytes once, with
    :meth:`head`, so a request costs one write of ready bytes plus its body.
    """

    __slots__ = ("_closed", "_host", "_idle", "_limit", "_port", "_request_line", "_ssl", "_tls")

    def __init__(self, url: str, max_connections: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._ssl: ssl.SSLContext | None = None
        host = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        self._request_line = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}"
        self._idle: list[_Connection] = []
        self._limit = asyncio.Semaphore(max_connections)
        self._closed = False

    def head(self, headers: Mapping[str, str]) -> bytes:
        """The request line and ``headers`` as the bytes :meth:`post` sends before a body.

        Raises:
            ValueError: a header that would end the block early or that
                HTTP cannot carry; the message never quotes a value.
        """
        lines = [self._request_line]
        lines += [f"{name}: {value}" for name, value in _checked(headers).items()]
        return _latin1("\r\n".join(lines), headers)

    async def post(self, head: bytes, body: bytes) -> HttpResponse:
        """Send ``body`` after ``head`` (from :meth:`head`) and read the reply's status and headers.

        The caller reads the body from the returned response, which gives
        its connection back to the pool once the body is all read, or closes
        it on :meth:`HttpResponse.close`.
        """
        data = b"%s\r\nContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        await self._limit.acquire()
        connection = None
        try:
            connection = await self._connection()
            response = HttpResponse(self, connection)
            connection.writer.write(data)
            await connection.writer.drain()
            await response.read_head()
        except BaseException:
            if connection is not None:
                connection.close()
            self._limit.release()
            raise
        return response

    async def aclose(self) -> None:
        """Close every idle connection; connections still in use close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            await _closed(connection)

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        context = None
        if self._tls:
            context = self._ssl or self._context()
        reader, writer = await asyncio.open_connection(
            self._host, self._port, ssl=context, limit=_MAX_HEAD_BYTES
        )
        return _Connection(reader, writer)

    def _context(self) -> ssl.SSLContext:
        # Built on first use: loading the system's CA store costs tens of
        # milliseconds that a plain-HTTP endpoint never needs.
        self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, connection: _Connection | None, reusable: bool) -> None:
        self._limit.release()
        if connection is None:
            return
        if reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()


class HttpResponse:
    """One reply: its status and headers at once, its body read on demand.

    ``headers`` holds lower-case names. Read the body once, with
    :meth:`read` or :meth:`chunks`; either gives the connection back.
    """

    __slots__ = (
        "_connection",
        "_framing",
        "_inflate",
        "_keep_alive",
        "_pool",
        "_remaining",
        "headers",
        "status",
    )

    def __init__(self, pool: HttpPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status = 0
        self.headers: dict[str, str] = {}
        self._framing = "length"
        self._remaining = 0
        self._keep_alive = True
        self._inflate: zlib._Decompress | None = None

    @property
    def content_type(self) -> str | None:
        """The media type without parameters, lower-cased, or ``None`` when absent."""
        value = self.headers.get("content-type")
        return value.partition(";")[0].strip().lower() if value else None

    @property
    def content_length(self) -> int | None:
        """The declared body length, when the body is framed by one."""
        return self._remaining if self._framing == "length" else None

    @property
    def compressed(self) -> bool:
        return self._inflate is not None

    async def read_head(self) -> None:
        reader = self._reader()
        # An interim 1xx reply (100 Continue, 103 Early Hints) precedes the real
        # one; taken for it, it would leave the real reply for the next request.
        while 100 <= self.status < 200 or not self.status:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial or self.status:  # some of a reply, if only a 1xx, came
                    raise HttpProtocolError("the server closed the connection mid-headers") from exc
                raise HttpProtocolError("the server closed the connection before replying") from exc
            except asyncio.LimitOverrunError as exc:
                raise HttpProtocolError(f"reply headers over {_MAX_HEAD_BYTES} bytes") from exc
            lines = raw.decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            try:  # int() takes only ASCII digits from Latin-1 text; isdigit() takes "\xb2"
                self.status = int(rest[:3]) if rest[3:4] in ("", " ") else 0
            except ValueError:
                self.status = 0
            if not version.startswith("HTTP/1.") or not 100 <= self.status < 600:
                raise HttpProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        headers = self.headers
        for line in lines[1:-2]:
            name, colon, value = line.partition(":")
            if not colon:
                raise HttpProtocolError(f"malformed header line: {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        self._keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        self._frame(headers)

    def _frame(self, headers: dict[str, str]) -> None:
        if self.status in _NO_BODY:
            self._remaining = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = "chunked"
        elif "content-length" in headers:
            length = headers["content-length"]
            # isdigit() alone passes "\xb2" (superscript two), which int() refuses.
            if not (length.isdigit() and length.isascii()):
                raise HttpProtocolError(f"bad Content-Length: {length[:40]!r}")
            self._remaining = int(length)
        else:
            self._framing = "close"
            self._keep_alive = False
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(_GZIP_OR_ZLIB)
        elif encoding != "identity":
            raise HttpProtocolError(f"unsupported Content-Encoding {encoding!r}")

    async def read(self) -> bytes:
        """The whole body; for a plain body with a declared length, in one read."""
        if self._framing == "length" and self._inflate is None:
            try:
                body = await self._reader().readexactly(self._remaining)
            except asyncio.IncompleteReadError as exc:
                self.close()
                raise HttpProtocolError("the server closed the connection mid-body") from exc
            except BaseException:
                self.close()
                raise
            self._remaining = 0
            self._done()
            return body
        return b"".join([piece async for piece in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The decoded body as it arrives; leaving early closes the connection."""
        try:
            async for piece in self._raw_pieces():
                if self._inflate is None:
                    yield piece
                else:
                    decoded = self._inflate.decompress(piece)
                    if decoded:
                        yield decoded
            if self._inflate is not None:
                tail = self._inflate.flush()
                if not self._inflate.eof:
                    raise HttpProtocolError("the compressed body ends early")
                if tail:
                    yield tail
        except zlib.error as exc:
            self.close()
            raise HttpProtocolError(f"the compressed body is corrupt: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self._done()

    async def _raw_pieces(self) -> AsyncIterator[bytes]:
        reader = self._reader()
        try:
            if self._framing == "chunked":
                async for piece in _dechunk(reader):
                    yield piece
            elif self._framing == "close":
                while piece := await reader.read(_READ_SIZE):
                    yield piece
            else:
                while self._remaining:
                    piece = await reader.read(min(self._remaining, _READ_SIZE))
                    if not piece:
                        raise HttpProtocolError("the server closed the connection mid-body")
                    self._remaining -= len(piece)
                    yield piece
        except asyncio.IncompleteReadError as exc:
            raise HttpProtocolError("the server closed the connection mid-body") from exc
        except asyncio.LimitOverrunError as exc:
            raise HttpProtocolError("a chunk-size line is over the size limit") from exc

    def close(self) -> None:
        """Drop the connection (the rest of the body is never read); safe to call twice."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection, reusable=False)

    def _done(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection, reusable=self._keep_alive)

    def _reader(self) -> asyncio.StreamReader:
        if self._connection is None:
            raise RuntimeError("the body of this reply was already read or closed")
        return self._connection.reader


async def _dechunk(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The payload of a chunked body, stopping after its last (zero-size) chunk."""
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.partition(b";")[0].strip()
        # int(..., 16) alone would take "-5", "+5", "0x5" and "5_0".
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise HttpProtocolError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            # Trailer fields, if any, end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        while size:
            piece = await reader.read(min(size, _READ_SIZE))
            if not piece:
                raise HttpProtocolError("the server closed the connection mid-chunk")
            size -= len(piece)
            yield piece
        if await reader.readexactly(2) != b"\r\n":
            raise HttpProtocolError("a chunk does not end with CRLF")


def _checked(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers``, refused if a name or value could end the header block early;
    the error quotes neither a value nor a bad name: either may hold a key."""
    for name, value in headers.items():
        if any(c in name for c in "\r\n:"):
            raise ValueError("a header name holds a line break or a colon: not a valid header name")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r}: its value holds a line break")
    return headers


def _latin1(text: str, headers: Mapping[str, str]) -> bytes:
    """The header lines as bytes, refusing what Latin-1 lacks without letting the
    ``UnicodeEncodeError`` out or chained: it holds the whole block, key and all."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        pass
    bad = [name for name, value in headers.items() if not value.isascii() and max(value) > "\xff"]
    where = f"header {bad[0]!r}: its value" if bad else "the host or a header name"
    raise ValueError(f"{where} holds a character that HTTP headers cannot carry (not Latin-1)")


async def _closed(connection: _Connection) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await connection.writer.wait_closed()
