"""SQLite plumbing shared by the checkpoint store and the response cache.

Both write far more often than anyone reads, from an event loop that must
not stall on disk I/O. So writes go to one background thread per store,
which group-commits: it applies everything queued since its last commit in a
single transaction, starting as soon as that commit ends. The loop only
appends to a queue, a burst of a thousand completions costs one commit rather
than a thousand, and a quiet store commits each write at once. Databases run in WAL
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

_POLL = 0.1
"""Seconds between checks that the writer thread is alive while a flush waits."""


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
    """Group-commits queued writes on a daemon thread.

    The thread commits whatever has arrived as soon as its previous commit
    ends: no batch size, no timer. When writes arrive faster than commits,
    each commit simply carries more of them, so a process killed at any
    instant loses at most the commit under way and what arrived during it.

    ``submit`` never blocks. ``flush`` waits until everything submitted
    before it is on disk. ``on_commit``, if given, is called on the writer
    thread with the batches just committed. A failed commit (disk full, a
    database locked past the busy timeout) ends the thread at once and closes
    its connection, so nothing is left holding the file; every later
    ``submit`` or ``flush`` raises :class:`WriterError` naming the cause.
    """

    def __init__(
        self,
        path: Path,
        *,
        setup: Callable[[sqlite3.Connection], None] | None = None,
        on_commit: Callable[[list[list[Write]]], None] | None = None,
    ) -> None:
        self.path = path
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        self._conn = connect(path)
        try:
            if setup is not None:
                setup(self._conn)
        except BaseException:
            self._conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"plait-sqlite-{path.name}", daemon=True
        )
        self._thread.start()
        _live.add(self)

    def submit(self, writes: list[Write]) -> None:
        self.check()
        if writes:
            self._queue.put(writes)

    def flush(self) -> None:
        """Block until every earlier submission is committed (or the writer has failed)."""
        self.check()
        if self._closed:
            return
        marker = _Flush()
        self._queue.put(marker)
        # A writer that fails ends its thread; a marker queued just after it
        # drained the queue would never be set, so waiting also watches the thread.
        while not marker.done.wait(_POLL) and self._thread.is_alive():
            pass
        self.check()

    def close(self) -> None:
        """Commit what is queued, stop the thread and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        _live.discard(self)
        self.check()

    def check(self) -> None:
        """Raise :class:`WriterError` if a commit has failed."""
        if self._error is not None:
            raise WriterError(f"writing to {self.path} failed: {self._error}") from self._error

    def _run(self) -> None:
        conn = self._conn
        try:
            while self._error is None:
                batch, markers, stop = self._take(self._queue.get())
                if batch:
                    self._commit(conn, batch)
                    if self._error is None and self._on_commit is not None:
                        self._on_commit(batch)
                for marker in markers:
                    marker.done.set()
                if stop:
                    return
        finally:
            conn.close()
            if self._error is not None:
                self._release_waiters()

    def _take(self, item: _Item) -> tuple[list[list[Write]], list[_Flush], bool]:
        """``item`` and everything queued behind it: the writes, the flush markers, a stop."""
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
                return batch, markers, stop

    def _release_waiters(self) -> None:
        """After a failure: wake every flush still waiting; their writes are lost."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Flush):
                item.done.set()

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
