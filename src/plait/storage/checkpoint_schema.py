"""The checkpoint file's format: its tables, its version, how it is opened.

Both sides of a checkpoint use this: the session a run writes through and the
reader that inspects a directory without the module. Keeping the table
definitions and the version check in one place means the two never disagree
about what a file written by this plait looks like.

Every row is keyed by run, and every input by its position in the batch plus
a hash of its content (see :mod:`plait.storage.checkpoint_session`). The
version is SQLite's ``user_version``: a file stamped with a newer version than
this plait knows is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from plait.errors import CheckpointError
from plait.storage._sqlite import connect

FILENAME = "checkpoint.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS runs(
        run_id INTEGER PRIMARY KEY,
        module TEXT NOT NULL,
        shape TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        description TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        status TEXT NOT NULL,
        total INTEGER,
        failed INTEGER NOT NULL DEFAULT 0,
        pid INTEGER,
        host TEXT,
        UNIQUE(module, shape, fingerprint)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS inputs(
        run_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        digest TEXT NOT NULL,
        input TEXT NOT NULL,
        output TEXT NOT NULL,
        finished REAL NOT NULL,
        PRIMARY KEY(run_id, position, digest)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS nodes(
        run_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        digest TEXT NOT NULL,
        node_id TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY(run_id, position, digest, node_id)
    ) WITHOUT ROWID
    """,
)

TABLES = ("nodes", "inputs", "runs")
"""Every table holding rows of a run, children before the run itself."""


def open_for_writing(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` with the tables in place, stamped with this version.

    Raises:
        CheckpointError: the file was written by a newer plait.
        sqlite3.DatabaseError: the file is not a SQLite database.
        OSError: the directory cannot be created.
    """
    conn = connect(path)
    try:
        check_version(conn, path)
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def check_version(conn: sqlite3.Connection, path: Path) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer plait (checkpoint format {version}); upgrade plait"
        )


class ReadConnection:
    """A read-only connection for one ``with`` block, for looking without writing.

    A file that is not a checkpoint surfaces as :class:`CheckpointError` on
    entry, so a reader never shows a raw SQLite error.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._conn = connect(self._path, readonly=True)
            check_version(self._conn, self._path)
        except sqlite3.DatabaseError as error:
            raise CheckpointError(f"{self._path} is not a readable checkpoint: {error}") from None
        return self._conn

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
