"""An opt-in, on-disk cache of chat replies, keyed by the full request.

Re-running a pipeline while developing it, or re-running a batch after
changing one stage, should not pay again for calls whose request is
byte-for-byte the same. The key is a hash of everything that shapes the
reply: the endpoint's model, the messages, temperature, max tokens, the
response schema and every extra request option. Nothing about the endpoint's
address or credentials is part of the key or the stored row, so the file
holds no secret.

Lookups read SQLite directly on the calling thread (a point query on a
primary key, with no writer ever in the way under WAL); writes are queued to
a background thread that group-commits them, and stay visible to lookups
from memory until they are committed, so nothing ever waits for the disk
while a run goes on. A run waits for its rows to be on disk before it
returns (:func:`flush_open_caches`), so a process killed after a call
returned has lost none of that call's replies. Any number of processes may
share one cache file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from plait.clients.base import ChatRequest, ChatResponse
from plait.clients.structured import cached_response_format_payload, validate_reply
from plait.errors import ConfigError, ResponseValidationError, WriterError
from plait.storage._sqlite import BackgroundWriter, Write, connect
from plait.storage.codec import content_hash

FILENAME = "responses.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses(
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    content TEXT NOT NULL,
    finish_reason TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""
_INSERT = "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)"
_SELECT = (
    "SELECT model, content, finish_reason, input_tokens, output_tokens FROM responses WHERE key = ?"
)

Row = tuple[str, str, str, str | None, int, int, float]


def request_key(request: ChatRequest) -> str:
    """The cache key of ``request``: a hash of everything that shapes the reply."""
    response_format = (
        cached_response_format_payload(request.response_format)
        if request.response_format is not None
        else None
    )
    payload = [
        request.model,
        request.messages,
        request.temperature,
        request.max_tokens,
        response_format,
        request.options,
    ]
    return content_hash(payload, algorithm="sha256", default=repr)


class ResponseCache:
    """Chat replies stored in one SQLite file, shared by runs and processes.

    ``get`` and ``put`` are safe to call from any thread. Call :meth:`flush`
    to be sure everything put so far is on disk (runs do this when they end).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _file_for(Path(path))
        self._lock = threading.Lock()
        self._pending: dict[str, Row] = {}
        self._writer: BackgroundWriter | None = None
        self._reader: sqlite3.Connection | None = None
        self._open()
        _live_caches.add(self)

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    key = staticmethod(request_key)

    def get(self, request: ChatRequest, key: str | None = None) -> ChatResponse | None:
        """The stored reply to ``request``, or None.

        A stored structured reply that no longer validates against the
        request's ``response_format`` (the model class changed) is a miss.
        """
        key = key or request_key(request)
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                row: tuple[Any, ...] | None = pending[1:6]
            else:
                assert self._reader is not None
                row = self._reader.execute(_SELECT, (key,)).fetchone()
        if row is None:
            return None
        model, content, finish_reason, input_tokens, output_tokens = row
        parsed = None
        if request.response_format is not None:
            try:
                parsed = validate_reply(content, request.response_format)
            except ResponseValidationError:
                return None
        return ChatResponse(
            content=content,
            model=model,
            finish_reason=finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            parsed=parsed,
        )

    def put(self, request: ChatRequest, response: ChatResponse, key: str | None = None) -> None:
        key = key or request_key(request)
        row: Row = (
            key,
            response.model,
            response.content,
            response.finish_reason,
            response.input_tokens,
            response.output_tokens,
            time.time(),
        )
        with self._lock:
            writer = self._writer
            assert writer is not None
            self._pending[key] = row
            writer.submit([(_INSERT, [row])])

    def _committed(self, batches: list[list[Write]]) -> None:
        """On the writer thread: committed rows are readable from disk now."""
        with self._lock:
            pending = self._pending
            for writes in batches:
                for _, rows in writes:
                    for row in rows:
                        if pending.get(row[0]) is row:
                            del pending[row[0]]

    def flush(self) -> None:
        """Block until every reply put so far is committed.

        Raises:
            WriterError: the cache could not be written. The cache is closed
                then, releasing its thread and file handles; :func:`open_cache`
                opens the file afresh next time.
        """
        with self._lock:
            writer = self._writer
        if writer is not None:
            try:
                writer.flush()
            except WriterError:
                self.close()
                raise

    def __len__(self) -> int:
        self.flush()
        with self._lock:
            assert self._reader is not None
            (count,) = self._reader.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(count)

    def clear(self) -> None:
        """Forget every stored reply."""
        self.flush()
        with self._lock:
            assert self._reader is not None
            self._reader.execute("DELETE FROM responses")

    def close(self) -> None:
        """Commit what is queued and release the thread and file handles."""
        with self._lock:
            writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            with self._lock:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                self._pending.clear()
            with _registry_lock:
                if _open_caches.get(self.path) is self:
                    del _open_caches[self.path]
            _live_caches.discard(self)

    def _open(self) -> None:
        try:
            self._writer = BackgroundWriter(
                self.path, setup=_create_schema, on_commit=self._committed
            )
            self._reader = connect(self.path)
        except OSError as error:
            raise ConfigError(f"cannot open the response cache at {self.path}: {error}") from None


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)


def _file_for(path: Path) -> Path:
    """A path with a database suffix is the file; anything else is a directory for it."""
    if path.suffix in (".sqlite", ".sqlite3", ".db"):
        return path
    return path / FILENAME


def default_cache_path() -> Path:
    """``$PLAIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/plait``, else ``~/.cache/plait``."""
    configured = os.environ.get("PLAIT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "plait"


_open_caches: dict[Path, ResponseCache] = {}
_live_caches: weakref.WeakSet[ResponseCache] = weakref.WeakSet()


def flush_open_caches() -> None:
    """Block until every reply put into any cache of this process is committed.

    A run calls this as it ends, so its replies are durable when it returns;
    that covers an endpoint's own cache too, which the run never sees.

    Raises:
        WriterError: a cache could not be written (the disk is full, say).
    """
    for cache in list(_live_caches):
        cache.flush()


_registry_lock = threading.Lock()


def open_cache(spec: Any) -> ResponseCache | None:
    """The cache a ``cache=`` setting names: None/False for none, True for the
    default location, a path, or a ResponseCache. Caches are shared per file,
    so every run in the process sees replies another run has not yet committed.
    """
    if spec is None or spec is False:
        return None
    if isinstance(spec, ResponseCache):
        return spec
    path = _file_for(default_cache_path() if spec is True else Path(spec).expanduser())
    key = path.resolve()
    with _registry_lock:
        cache = _open_caches.get(key)
        if cache is None:
            cache = _open_caches[key] = ResponseCache(key)
        return cache
