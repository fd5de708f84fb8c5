"""Durable replay of dynamic forwards: their calls kept in the checkpoint.

A dynamic node's result is checkpointed like any node's, but only once its
forward returns; a run killed in the middle of a long loop would pay for
every round again. So each call the forward makes is stored too, as a node
row of the input named ``<dynamic node id>@<sequence number>`` (the call's
position in that forward), holding the call's fingerprint and its output.
The rows go through the checkpoint session's ordinary buffer and group
commit, and are dropped with the input's other node rows once it finishes.

A rerun runs the forward again. Call ``n`` returns its stored output without
a request when the stored fingerprint matches (the child's traced graph,
prompts included, plus the resolved arguments); the first call that does
not match switches the forward to live calls for the rest of it, since what
follows may depend on a reply that is now different. A call with nothing
stored (it was in flight at the kill) just runs live: the calls that follow
it may still match, which is what lets ``F.map`` resume with half its pieces
done. Code outside plait calls must be deterministic for this to help: the
same input must lead to the same calls in the same order.

Nested dynamic modules replay at every depth: a forward run by a call of
another forward stores its calls under its own path (``outer.middle#0@3``:
call 3 of the forward that call 0 of ``outer`` ran), so a rerun killed deep
in an inner loop skips the inner calls that finished, not just whole outer
calls. When the outer call itself is stored, it returns at once and the
rows beneath it are never read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.errors import CheckpointError, UnencodableError
from plait.execution.dynamic import MISSING
from plait.execution.state import ExecutionState
from plait.graph import GraphNode
from plait.storage.codec import content_hash, to_json
from plait.storage.fingerprint import describe

if TYPE_CHECKING:
    from plait.storage.checkpoint_session import CheckpointSession

CALL_MARK = "@"
"""Separates a dynamic node's id from a call's sequence number in a stored row's id."""


class CallStore:
    """One run's stored dynamic calls, per input, and how a call is fingerprinted."""

    def __init__(self, session: CheckpointSession) -> None:
        self.session = session
        self._stored: dict[int, dict[str, dict[int, Any]]] = {}

    def adopt(self, index: int, finished: dict[str, Any]) -> None:
        """Keep the call rows among an input's restored node results."""
        for row_id, value in finished.items():
            node_id, mark, seq = row_id.rpartition(CALL_MARK)
            if mark and seq.isdigit() and isinstance(value, list) and len(value) == 2:
                by_node = self._stored.setdefault(index, {})
                by_node.setdefault(node_id, {})[int(seq)] = value

    def forget(self, index: int) -> None:
        self._stored.pop(index, None)

    def replay(self, state: ExecutionState, node_id: str) -> StoredCalls:
        """The stored calls of a dynamic node of the input's own graph."""
        node = state.plan.nodes[node_id]
        return StoredCalls(
            self, state.checkpoint, state.index, node_id, node, self.take(state.index, node_id)
        )

    def take(self, index: int, path: str) -> dict[int, Any]:
        """The stored calls of the forward at ``path`` of input ``index`` (each read once)."""
        return self._stored.get(index, {}).pop(path, {})

    def fingerprint(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """What decides a call's reply, hashed; None if its arguments are not JSON data.

        Described afresh each time (not cached per graph): a prompt held in a
        plain attribute can change without the graph being traced again.
        """
        graph = module._plait_graph(args, kwargs)
        try:
            return content_hash([describe(graph), to_json([args, kwargs])])
        except UnencodableError:
            return None


class StoredCalls:
    """The stored calls of one dynamic forward of one input, consulted in call order.

    ``path`` names the forward: the dynamic node's id for a node of the
    input's graph; for one run by a call of another forward, that forward's
    path, the call's child name and sequence number (``outer.middle#0``),
    as spans and profiles name it.
    """

    __slots__ = ("_diverged_at", "_index", "_key", "_node", "_path", "_store", "_stored")

    def __init__(
        self,
        store: CallStore,
        key: Any,
        index: int,
        path: str,
        node: GraphNode,
        stored: dict[int, Any],
    ) -> None:
        self._store = store
        self._key = key
        self._index = index
        self._path = path
        self._node = node
        self._stored = stored
        self._diverged_at: int | None = None

    def lookup(self, seq: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        entry = self._stored.get(seq)
        if self._diverged_at is not None or entry is None:
            return MISSING
        if self._store.fingerprint(module, args, kwargs) != entry[0]:
            self._diverged_at = seq
            return MISSING
        return entry[1]

    def nested(self, seq: int, path: str, node: GraphNode) -> StoredCalls | None:
        """Replay for a dynamic node that call ``seq`` ran, unless a call up to it differed.

        Its calls are looked up on their own, so a rerun killed deep in a
        nested loop resumes there. From this forward's first differing call
        on, calls run live, and so does everything inside them.
        """
        if self._diverged_at is not None and self._diverged_at <= seq:
            return None
        stored = self._store.take(self._index, path)
        return StoredCalls(self._store, self._key, self._index, path, node, stored)

    def store(
        self, seq: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        fingerprint = self._store.fingerprint(module, args, kwargs)
        if fingerprint is None:
            return
        row_id = f"{self._path}{CALL_MARK}{seq}"
        try:
            self._store.session.node_done(self._key, row_id, self._node, [fingerprint, output])
        except CheckpointError:
            # An output that cannot be stored only means this call will run
            # live again after a crash; the node's own result says more.
            return
