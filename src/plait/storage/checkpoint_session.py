"""Checkpoints: finished work kept on disk, so a rerun skips it.

With ``checkpoint_dir`` set, a run writes every finished node and every
finished input to ``<checkpoint_dir>/checkpoint.sqlite``. Calling the same
module on the same inputs with the same directory again returns finished
inputs straight from the file and, for inputs that were cut short, runs only
the nodes that had not finished.

Identity. A *run* in the store is one version of one module: its class, its
call shape and the fingerprint of its traced graph (see
:mod:`plait.storage.fingerprint`: prompts, parameter values, settings and
wiring). Results are reused only under the same fingerprint. When the module
has changed since results were stored, the call stops before sending
anything and says what changed; ``checkpoint_mismatch="new"`` computes fresh
results for the new version (the old ones stay), ``"reuse"`` adopts the
stored results on purpose. An input is identified by its position in the
batch plus a hash of its content, so reordering or editing inputs never
returns another input's result.

Writing. The event loop only encodes values (JSON, see
:mod:`plait.storage.codec`) and appends rows to a buffer, which it hands to
the background writer at the end of the current loop step, so completions
that arrive together travel together. The writer group-commits (see
:mod:`plait.storage._sqlite`): it commits whatever has arrived as soon as its
previous commit ends. SQLite in WAL mode makes each commit atomic, so a
process killed at any moment (``kill -9`` included) leaves the store as it
was after some commit: at most the requests in flight and one commit's worth
of completions are lost, and nothing is ever half-written.

Reading a directory without the module is
:mod:`plait.storage.checkpoint_reader`; the file's tables are
:mod:`plait.storage.checkpoint_schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from plait.errors import (
    CheckpointError,
    StorageError,
    UnencodableError,
    UnstorableError,
    WriterError,
)
from plait.graph import InferenceGraph
from plait.storage._sqlite import BackgroundWriter
from plait.storage.checkpoint_schema import FILENAME, open_for_writing
from plait.storage.codec import class_path, content_hash, decode, digest, encode
from plait.storage.dir_lock import DirectoryLock
from plait.storage.fingerprint import describe, differences

MismatchPolicy = Literal["error", "reuse", "new"]

_log = logging.getLogger("plait.storage.checkpoint")

_INSERT_NODE = "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?)"
_INSERT_INPUT = "INSERT OR REPLACE INTO inputs VALUES (?, ?, ?, ?, ?, ?)"
_DELETE_NODES = "DELETE FROM nodes WHERE run_id = ? AND position = ? AND digest = ?"
_TOUCH_RUN = "UPDATE runs SET updated = ?, failed = failed + ? WHERE run_id = ?"
_END_RUN = "UPDATE runs SET updated = ?, status = ?, pid = NULL WHERE run_id = ?"

InputKey = tuple[int, int, str]
"""(run id, position, content digest): where one input's rows live."""


@dataclass(slots=True)
class Binding:
    """What a session knows about one graph (call shape) of the module it runs."""

    run_id: int
    models: dict[str, type[BaseModel]]
    has_rows: bool


class CheckpointSession:
    """One call's use of a checkpoint directory: restores at admission, saves as work finishes.

    Created on the event loop that runs the call; everything but the
    background writer runs on that loop.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        module: Any,
        total: int | None,
        mismatch: MismatchPolicy = "error",
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILENAME
        self.module_name = type(module).__qualname__
        self.total = total
        self.mismatch = mismatch
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint_dir {self.directory} exists and is not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(
                f"cannot create checkpoint_dir {self.directory}: {error}"
            ) from None
        self._lock = DirectoryLock(self.directory)
        conn: sqlite3.Connection | None = None
        try:
            conn = open_for_writing(self.path)
            self._writer = BackgroundWriter(self.path)
        except BaseException as error:
            if conn is not None:
                conn.close()
            self._lock.release()
            if isinstance(error, sqlite3.DatabaseError | OSError):
                raise CheckpointError(f"cannot use {self.path} as a checkpoint: {error}") from None
            raise
        self._conn = conn
        self._bindings: dict[int, Binding] = {}
        self._loop = asyncio.get_running_loop()
        self._handoff: asyncio.Handle | None = None
        self._nodes: dict[InputKey, list[tuple[int, int, str, str, str]]] = {}
        self._inputs: list[tuple[int, int, str, str, str, float]] = []
        self._finished: list[InputKey] = []
        self._failed: dict[int, int] = {}
        self._buffered = 0
        self._closed = False

    # -- admission -------------------------------------------------------------

    def bind(self, graph: InferenceGraph, shape: tuple[Any, ...]) -> Binding:
        """The run this graph's results belong to, found or created (once per graph).

        Raises:
            CheckpointError: the directory holds results of a different version
                of this module and ``mismatch`` is ``"error"``.
        """
        binding = self._bindings.get(id(graph))
        if binding is None:
            binding = self._bindings[id(graph)] = self._bind(graph, json.dumps(list(shape)))
        return binding

    def _bind(self, graph: InferenceGraph, shape: str) -> Binding:
        description = describe(graph)
        version = content_hash(description)
        conn = self._conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT run_id FROM runs WHERE module = ? AND shape = ? AND fingerprint = ?",
                (self.module_name, shape, version),
            ).fetchone()
            if row is not None:
                run_id = int(row[0])
            else:
                run_id = self._new_or_adopted(shape, version, description, now)
            conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, host = ?, total = ?, failed = 0, "
                "updated = ? WHERE run_id = ?",
                (os.getpid(), socket.gethostname(), self.total, now, run_id),
            )
            has_rows = (
                conn.execute(
                    "SELECT EXISTS(SELECT 1 FROM inputs WHERE run_id = ?) "
                    "OR EXISTS(SELECT 1 FROM nodes WHERE run_id = ?)",
                    (run_id, run_id),
                ).fetchone()[0]
                == 1
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return Binding(run_id, _models_of(graph), has_rows)

    def _new_or_adopted(
        self, shape: str, version: str, description: dict[str, Any], now: float
    ) -> int:
        conn = self._conn
        previous = conn.execute(
            """
            SELECT run_id, description, updated FROM runs r
            WHERE module = ? AND shape = ?
              AND (EXISTS(SELECT 1 FROM inputs i WHERE i.run_id = r.run_id)
                   OR EXISTS(SELECT 1 FROM nodes n WHERE n.run_id = r.run_id))
            ORDER BY updated DESC LIMIT 1
            """,
            (self.module_name, shape),
        ).fetchone()
        text = json.dumps(description, sort_keys=True, ensure_ascii=False)
        if previous is not None and self.mismatch == "error":
            raise self._mismatch_error(int(previous[0]), json.loads(previous[1]), description)
        if previous is not None and self.mismatch == "reuse":
            conn.execute(
                "UPDATE runs SET fingerprint = ?, description = ? WHERE run_id = ?",
                (version, text, previous[0]),
            )
            return int(previous[0])
        cursor = conn.execute(
            "INSERT INTO runs(module, shape, fingerprint, description, created, updated, status) "
            "VALUES (?, ?, ?, ?, ?, ?, 'running')",
            (self.module_name, shape, version, text, now, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _mismatch_error(
        self, run_id: int, old: dict[str, Any], new: dict[str, Any]
    ) -> CheckpointError:
        changes = "\n".join(f"  - {line}" for line in differences(old, new))
        return CheckpointError(
            f"checkpoint_dir {self.directory} holds results of a different version of "
            f"{self.module_name} "
            f"(run {run_id}); since then:\n{changes}\n"
            "Nothing was run, since those results may no longer match. Pass "
            "checkpoint_mismatch='new' to compute results for this version (the old ones are "
            "kept), checkpoint_mismatch='reuse' to use the stored results anyway, or use "
            "another checkpoint_dir."
        )

    def restore(
        self,
        binding: Binding,
        position: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[InputKey, tuple[Any] | None, dict[str, Any]]:
        """The input's key, ``(output,)`` if its output is stored, and its stored node results.

        Raises:
            UnstorableError: the input cannot be hashed because it is not JSON data.
        """
        try:
            key: InputKey = (binding.run_id, position, digest([args, kwargs]))
        except UnencodableError as error:
            raise UnstorableError(
                f"input {position} cannot be checkpointed: {error}; checkpointed inputs must "
                "be JSON data, pydantic models, tuples or bytes"
            ) from None
        if not binding.has_rows:
            return key, None, {}
        conn = self._conn
        row = conn.execute(
            "SELECT output FROM inputs WHERE run_id = ? AND position = ? AND digest = ?", key
        ).fetchone()
        if row is not None:
            try:
                return key, (decode(row[0], binding.models),), {}
            except StorageError as error:
                _dropped(f"the stored output of input {position}", error)
        nodes: dict[str, Any] = {}
        query = "SELECT node_id, value FROM nodes WHERE run_id = ? AND position = ? AND digest = ?"
        for node_id, text in conn.execute(query, key):
            try:
                nodes[node_id] = decode(text, binding.models)
            except StorageError as error:
                _dropped(f"the stored value of node {node_id!r} of input {position}", error)
        return key, None, nodes

    # -- recording -------------------------------------------------------------

    def node_done(self, key: InputKey, node_id: str, node: Any, value: Any) -> None:
        """Buffer a finished node's value.

        Raises:
            UnstorableError: the value is not storable as JSON (names the node).
            CheckpointError: nothing more can be written (the disk is full, say).
        """
        try:
            text = encode(value)
        except UnencodableError as error:
            where = f" ({node.module_path})" if node.module_path else ""
            raise UnstorableError(
                f"node {node_id!r}{where} produced a value that cannot be checkpointed: {error}. "
                "Checkpointed node outputs must be JSON data, pydantic models, plait Values, "
                "tuples or bytes; return one of those, or run without checkpoint_dir."
            ) from None
        rows = self._nodes.get(key)
        if rows is None:
            rows = self._nodes[key] = []
        rows.append((*key, node_id, text))
        self._added()

    def input_done(self, key: InputKey, given: Any, output: Any) -> None:
        """Buffer a finished input; its node rows are no longer needed.

        Raises:
            UnstorableError: the input or its output is not storable as JSON.
            CheckpointError: nothing more can be written.
        """
        try:
            output_text = encode(output)
            input_text = encode(given)
        except UnencodableError as error:
            raise UnstorableError(
                f"the output of input {key[1]} cannot be checkpointed: {error}"
            ) from None
        self._nodes.pop(key, None)
        self._inputs.append((*key, input_text, output_text, time.time()))
        self._finished.append(key)
        self._added()

    def input_failed(self, key: InputKey) -> None:
        self._failed[key[0]] = self._failed.get(key[0], 0) + 1
        self._added()

    def _added(self) -> None:
        try:
            self._writer.check()
        except WriterError as error:
            # Nothing more can be saved: say so now, so the run stops paying for calls.
            raise CheckpointError(str(error)) from None
        self._buffered += 1
        if self._handoff is None:
            self._handoff = self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._handoff = None
        # A failure is raised again by the next write or by close, which every run makes.
        with contextlib.suppress(CheckpointError):
            self.flush()

    def flush(self) -> None:
        """Hand everything buffered to the writer as one transaction."""
        if self._handoff is not None:
            self._handoff.cancel()
            self._handoff = None
        if not self._buffered:
            return
        self._buffered = 0
        node_rows = [row for rows in self._nodes.values() for row in rows]
        self._nodes = {}
        now = time.time()
        touched = {row[0] for row in node_rows} | {row[0] for row in self._inputs}
        touched.update(self._failed)
        writes: list[tuple[str, Any]] = [
            (_INSERT_NODE, node_rows),
            (_INSERT_INPUT, self._inputs),
            (_DELETE_NODES, self._finished),
            (_TOUCH_RUN, [(now, self._failed.get(run_id, 0), run_id) for run_id in touched]),
        ]
        self._inputs = []
        self._finished = []
        self._failed = {}
        try:
            self._writer.submit(writes)
        except WriterError as error:
            raise CheckpointError(str(error)) from None

    def close(self, status: str) -> None:
        """Write what is buffered, mark the runs with ``status`` and wait for the disk."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            now = time.time()
            ends = [(now, status, binding.run_id) for binding in self._bindings.values()]
            self._writer.submit([(_END_RUN, ends)])
        except (CheckpointError, WriterError) as error:
            failure: BaseException | None = error
        else:
            failure = None
        finally:
            # Whatever happened, nothing of this run may keep holding the file.
            try:
                self._writer.close()
            except WriterError as error:
                failure = failure or error
            self._conn.close()
            self._lock.release()
        if failure is not None:
            raise CheckpointError(str(failure)) from None


def _dropped(what: str, error: StorageError) -> None:
    """A stored row that does not decode is not trusted: it is logged and its work redone.

    Logged rather than warned: it is an event in a batch job's data, for the
    operator's log, and every row counts (``warnings`` would show one per call
    site and hide how many rows were dropped).
    """
    _log.warning("%s does not decode and is run again: %s", what, error)


def _models_of(graph: InferenceGraph) -> dict[str, type[BaseModel]]:
    """The pydantic classes a stored row of this graph may decode into, and no others.

    Those each module names (response formats, parse targets) and those it
    says its outputs hold (``stored_models()``, e.g. a tool-using call's
    ``AssistantMessage``), for every module under each node, not just the
    node's own: a dynamic node stores the calls its children make, at any
    depth, and each of those rows holds a child's output.
    """
    models: dict[str, type[BaseModel]] = {}
    for node in graph.nodes.values():
        walk = getattr(node.module, "modules", None)
        for module in walk() if callable(walk) else (node.module,):
            named = [v for v in getattr(module, "__dict__", {}).values() if isinstance(v, type)]
            declared = getattr(module, "stored_models", None)
            if callable(declared):
                named.extend(declared())
            for value in named:
                if issubclass(value, BaseModel):
                    models[class_path(value)] = value
    return models
