"""SQLite plumbing shared by the checkpoint store and the response cache.

Both write far more often than anyone reads, from an event loop that must
not stall on disk I/O. So writes go to one background thread per store,
which applies everything queued since its last commit in a single
transaction: the loop only appends to a queue, and a burst of a thousand
completions costs one commit rather than a thousand. Databases run in WAL
mode, where a commit is atomic and a reader never waits for a writer, so a
process killed at any instant leaves either the old or the new state on disk,
never a torn one.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plait.errors import WriterError

Rows = Sequence[Sequence[Any]]
Write = tuple[str, Rows]
"""One statement and the parameter rows to run it with (``executemany``)."""

BUSY_TIMEOUT = 30.0
"""Seconds a connection waits for another process's write lock before failing."""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with autocommit; transactions are explicit."""
    if readonly:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
        return conn
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL skips the fsync per commit in WAL mode: a power cut may lose the
    # last commits, a crashed process loses nothing, and neither corrupts.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_Item = list[Write] | _Flush | None


class BackgroundWriter:
    """Commits queued writes on a daemon thread, one transaction per wake-up.

    ``submit`` never blocks. ``flush`` waits until everything submitted
    before it is on disk. ``on_commit``, if given, is called on the writer
    thread with the batches just committed. After a failure (disk full, a
    database locked past the busy timeout) the writer commits nothing more,
    and the next ``submit`` or ``flush`` raises :class:`WriterError`, so the
    failure is not silently dropped.
    """

    def __init__(
        self,
        path: Path,
        *,
        setup: Callable[[sqlite3.Connection], None] | None = None,
        linger: float = 0.0,
        on_commit: Callable[[list[list[Write]]], None] | None = None,
    ) -> None:
        self.path = path
        self._linger = linger
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        self._conn = connect(path)
        if setup is not None:
            setup(self._conn)
        self._thread = threading.Thread(
            target=self._run, name=f"plait-sqlite-{path.name}", daemon=True
        )
        self._thread.start()
        _live.add(self)

    def submit(self, writes: list[Write]) -> None:
        self._raise_if_failed()
        if writes:
            self._queue.put(writes)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every earlier submission is committed."""
        self._raise_if_failed()
        if self._closed:
            return
        marker = _Flush()
        self._queue.put(marker)
        marker.done.wait(timeout)
        self._raise_if_failed()

    def close(self) -> None:
        """Commit what is queued, stop the thread and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        _live.discard(self)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterError(f"writing to {self.path} failed: {self._error}") from self._error

    def _run(self) -> None:
        conn = self._conn
        try:
            while True:
                item = self._queue.get()
                if self._linger and isinstance(item, list):
                    # Let a burst of single writes gather into one commit.
                    time.sleep(self._linger)
                batch: list[list[Write]] = []
                markers: list[_Flush] = []
                stop = False
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, _Flush):
                        markers.append(item)
                    else:
                        batch.append(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch and self._error is None:
                    self._commit(conn, batch)
                    if self._error is None and self._on_commit is not None:
                        self._on_commit(batch)
                for marker in markers:
                    marker.done.set()
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[list[Write]]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for writes in batch:
                for sql, rows in writes:
                    conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException as error:
            self._error = error
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")


_live: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Commit what is still queued when the interpreter exits normally."""
    for writer in list(_live):
        with contextlib.suppress(WriterError):
            writer.close()
