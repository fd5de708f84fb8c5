"""The response cache's file: one SQLite table of replies, shared by every handle on it.

Lookups read SQLite directly on the calling thread (a point query on a
primary key, with no writer ever in the way under WAL). Writes are queued to
a background thread that group-commits them, and stay visible to lookups
from memory until they are committed, so nothing waits for the disk while a
run goes on; a run waits for them once, as it ends (:func:`flush_all`). What
a key means and when a reply may be stored is :mod:`plait.storage.cache`.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any

from plait.errors import ConfigError, WriterError
from plait.storage._sqlite import BackgroundWriter, Write, connect

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
"""key, model, content, finish reason, input tokens, output tokens, time stored."""


class ReplyStore:
    """One cache file: its reader, its writer, and the rows not yet committed.

    Safe to use from any thread. A write that fails (the disk is full) closes
    the store, releasing its thread and file handles; using it afterwards
    raises :class:`WriterError` saying why.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending: dict[str, Row] = {}
        self._failure: str | None = None
        try:
            self._writer: BackgroundWriter | None = BackgroundWriter(
                path, setup=_create_schema, on_commit=self._committed
            )
            self._reader: sqlite3.Connection | None = connect(path)
        except OSError as error:
            raise ConfigError(f"cannot open the response cache at {path}: {error}") from None
        _live.add(self)

    @property
    def closed(self) -> bool:
        return self._writer is None

    def row(self, key: str) -> tuple[Any, ...] | None:
        """(model, content, finish reason, input tokens, output tokens), or None."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                return pending[1:6]
            reader = self._open_reader()
            found: tuple[Any, ...] | None = reader.execute(_SELECT, (key,)).fetchone()
            return found

    def put(self, row: Row) -> None:
        with self._lock:
            writer = self._writer
            if writer is None:
                raise self._closed_error()
            self._pending[row[0]] = row
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
        """Block until every row put so far is committed.

        Raises:
            WriterError: the file could not be written; the store is closed.
        """
        with self._lock:
            writer = self._writer
        if writer is None:
            return
        try:
            writer.flush()
        except WriterError as error:
            self._failure = str(error)
            self.close()
            raise

    def count(self) -> int:
        self.flush()
        with self._lock:
            (count,) = self._open_reader().execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(count)

    def clear(self) -> None:
        self.flush()
        with self._lock:
            self._open_reader().execute("DELETE FROM responses")

    def close(self) -> None:
        """Commit what is queued and release the thread and file handles."""
        with self._lock:
            writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        except WriterError as error:
            self._failure = str(error)
            raise
        finally:
            with self._lock:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                self._pending.clear()
            _live.discard(self)

    def _open_reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise self._closed_error()
        return self._reader

    def _closed_error(self) -> WriterError:
        why = f" after a failed write ({self._failure})" if self._failure else ""
        return WriterError(f"the response cache at {self.path} is closed{why}")


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)


_live: weakref.WeakSet[ReplyStore] = weakref.WeakSet()


def flush_all() -> None:
    """Block until every row put into any cache file of this process is committed.

    Raises:
        WriterError: a cache file could not be written (the disk is full, say).
    """
    for store in list(_live):
        store.flush()
