"""Reading a checkpoint directory without the module that wrote it.

A batch job's owner wants to know how far a run got, or to get its results
out, from a shell or a notebook where the pipeline's code may not even be
importable. So :class:`CheckpointManager` only reads the file: it lists the
runs with their progress and returns stored values as plain JSON data (see
:func:`plait.storage.codec.plain`), never needing a model class. What a run
writes, and how it restores, is :mod:`plait.storage.checkpoint_session`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plait.errors import CheckpointError
from plait.storage._sqlite import connect
from plait.storage.checkpoint_schema import FILENAME, TABLES, ReadConnection
from plait.storage.codec import plain


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run (one version of one module) in a checkpoint directory.

    ``finished`` counts inputs whose output is stored, ``partial`` inputs with
    some finished nodes but no output yet, ``failed`` the inputs that failed
    in the latest call. ``total`` is the size of the latest call's batch when
    it was known. ``status`` is ``running``, ``finished``, ``incomplete``
    (some inputs failed), ``stopped`` (cancelled, over budget or aborted) or
    ``interrupted`` (its process died while running).
    """

    run_id: int
    module: str
    shape: str
    fingerprint: str
    status: str
    created: float
    updated: float
    total: int | None
    finished: int
    partial: int
    failed: int

    @property
    def progress(self) -> float | None:
        """Finished inputs as a fraction of ``total`` (None when the total is unknown)."""
        if not self.total:
            return None
        return min(1.0, self.finished / self.total)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A finished input as stored: its position in the batch, the input and the output."""

    index: int
    input: Any
    output: Any


class CheckpointManager:
    """Reads a checkpoint directory: the runs it holds, their progress, their results.

    Values come back as plain JSON data (models as their fields, tuples as
    lists), so no module or model class is needed to inspect a checkpoint.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILENAME
        if not self.path.exists():
            raise CheckpointError(f"no checkpoint found in {self.directory}")

    def runs(self) -> list[RunInfo]:
        """Every run in the directory, most recently updated first."""
        with self._read() as conn:
            rows = conn.execute(
                """
                SELECT r.run_id, r.module, r.shape, r.fingerprint, r.status, r.created,
                       r.updated, r.total, r.failed, r.pid, r.host,
                       (SELECT COUNT(*) FROM inputs i WHERE i.run_id = r.run_id),
                       (SELECT COUNT(*) FROM (SELECT DISTINCT position, digest FROM nodes n
                                              WHERE n.run_id = r.run_id))
                FROM runs r ORDER BY r.updated DESC, r.run_id DESC
                """
            ).fetchall()
        return [
            RunInfo(
                run_id=row[0],
                module=row[1],
                shape=row[2],
                fingerprint=row[3],
                status=_live_status(row[4], row[9], row[10]),
                created=row[5],
                updated=row[6],
                total=row[7],
                failed=row[8],
                finished=row[11],
                partial=row[12],
            )
            for row in rows
        ]

    def run(self, run_id: int | None = None) -> RunInfo:
        """One run by id, or the most recently updated one."""
        runs = self.runs()
        if not runs:
            raise CheckpointError(f"the checkpoint in {self.directory} holds no runs")
        if run_id is None:
            return runs[0]
        for info in runs:
            if info.run_id == run_id:
                return info
        known = ", ".join(str(info.run_id) for info in runs)
        raise CheckpointError(f"no run {run_id} in {self.directory}; runs: {known}")

    def results(self, run_id: int | None = None) -> list[StoredResult]:
        """The finished inputs of a run (default: the latest), in batch order."""
        return list(self.iter_results(run_id))

    def iter_results(self, run_id: int | None = None) -> Iterator[StoredResult]:
        chosen = self.run(run_id).run_id
        with self._read() as conn:
            cursor = conn.execute(
                "SELECT position, input, output FROM inputs WHERE run_id = ? ORDER BY position",
                (chosen,),
            )
            for position, given, output in cursor:
                yield StoredResult(position, plain(json.loads(given)), plain(json.loads(output)))

    def export(self, path: str | os.PathLike[str], run_id: int | None = None) -> int:
        """Write a run's results as JSON Lines (index, input, output); returns how many."""
        count = 0
        target = Path(path)
        with target.open("w", encoding="utf-8") as file:
            for result in self.iter_results(run_id):
                record = {"index": result.index, "input": result.input, "output": result.output}
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        return count

    def delete(self, run_id: int) -> None:
        """Remove a run and everything stored for it."""
        self.run(run_id)
        conn = connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for table in TABLES:
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _read(self) -> ReadConnection:
        return ReadConnection(self.path)


def _live_status(status: str, pid: int | None, host: str | None) -> str:
    """A run still marked running whose process is gone was interrupted."""
    if status != "running" or pid is None or host != socket.gethostname():
        return status
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "interrupted"
    except PermissionError:
        return status
    return status
