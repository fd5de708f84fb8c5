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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.errors import CheckpointError, UnencodableError
from plait.execution.dynamic import MISSING
from plait.execution.state import ExecutionState
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
        stored = self._stored.get(state.index, {}).pop(node_id, {})
        return StoredCalls(self, state, node_id, stored)

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
    """The stored calls of one dynamic node of one input, consulted in call order."""

    __slots__ = ("_diverged", "_node", "_node_id", "_state", "_store", "_stored")

    def __init__(
        self, store: CallStore, state: ExecutionState, node_id: str, stored: dict[int, Any]
    ) -> None:
        self._store = store
        self._state = state
        self._node_id = node_id
        self._node = state.plan.nodes[node_id]
        self._stored = stored
        self._diverged = False

    def lookup(self, seq: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        entry = self._stored.get(seq)
        if self._diverged or entry is None:
            return MISSING
        if self._store.fingerprint(module, args, kwargs) != entry[0]:
            self._diverged = True
            return MISSING
        return entry[1]

    def store(
        self, seq: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        fingerprint = self._store.fingerprint(module, args, kwargs)
        if fingerprint is None:
            return
        row_id = f"{self._node_id}{CALL_MARK}{seq}"
        try:
            self._store.session.node_done(
                self._state.checkpoint, row_id, self._node, [fingerprint, output]
            )
        except CheckpointError:
            # An output that cannot be stored only means this call will run
            # live again after a crash; the node's own result says more.
            return
