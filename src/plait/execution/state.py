"""Execution state of one graph for one input.

The per-graph facts every input needs (dependency counts, priorities, which
nodes are ready at the start, descendants) are computed once in
:class:`GraphPlan`; an :class:`ExecutionState` copies only the counters, which
keeps starting an input cheap when a batch has hundreds of thousands of them.
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol

from plait.errors import CancelledNodeError
from plait.graph import (
    ForwardRecord,
    GraphNode,
    InferenceGraph,
    NodeKind,
    NodeRef,
    ParamRef,
    Template,
)
from plait.values import to_text


class GraphPlan:
    """Precomputed scheduling data for one graph, shared by all its inputs."""

    __slots__ = (
        "_descendants",
        "aliases",
        "dynamic",
        "graph",
        "initial_keys",
        "initial_ready",
        "input_ids",
        "keys",
        "node_count",
        "nodes",
        "output",
        "remaining",
    )

    def __init__(self, graph: InferenceGraph) -> None:
        self.graph = graph
        self.nodes: dict[str, GraphNode] = graph.nodes
        self.input_ids = tuple(graph.input_ids)
        self.output = graph.output
        inputs = set(self.input_ids)
        rank = _longest_path_first(graph)
        self.keys: dict[str, tuple[int, int, str]] = {
            nid: (-node.priority, rank[nid], nid) for nid, node in self.nodes.items()
        }
        self.remaining: dict[str, int] = {
            nid: sum(1 for dep in node.dependencies if dep not in inputs)
            for nid, node in self.nodes.items()
            if nid not in inputs
        }
        self.initial_ready = tuple(nid for nid, count in self.remaining.items() if count == 0)
        self.initial_keys = sorted(self.keys[nid] for nid in self.initial_ready)
        self.node_count = len(self.remaining)
        self.dynamic = frozenset(
            nid for nid, node in self.nodes.items() if node.kind is NodeKind.DYNAMIC
        )
        self.aliases = tuple(sorted(_aliases(self.nodes.values())))
        self._descendants: dict[str, frozenset[str]] = {}

    def descendants(self, node_id: str) -> frozenset[str]:
        found = self._descendants.get(node_id)
        if found is None:
            found = self._descendants[node_id] = frozenset(self.graph.descendants(node_id))
        return found


def _longest_path_first(graph: InferenceGraph) -> dict[str, int]:
    """Each node's rank among its input's ready nodes: most model calls still ahead first.

    Of two ready branches the one with the longer chain of calls behind it
    bounds when the input can finish, so it starts first; ties keep the
    order the calls were written in. Inputs are still ranked before nodes
    (older inputs first), so this never delays an earlier input's result.
    """
    order = graph.topological_order()
    nodes = graph.nodes
    ahead: dict[str, int] = {}
    for nid in reversed(order):
        node = nodes[nid]
        own = 1 if node.kind is NodeKind.LLM or node.kind is NodeKind.DYNAMIC else 0
        ahead[nid] = own + max((ahead[dep] for dep in node.dependents), default=0)
    position = {nid: index for index, nid in enumerate(order)}
    ranked = sorted(order, key=lambda nid: (-ahead[nid], position[nid]))
    return {nid: index for index, nid in enumerate(ranked)}


def _aliases(nodes: Any) -> set[str]:
    """The aliases a graph may call: its LLM nodes', and those inside its dynamic
    modules, so they are checked before the first request as a static graph's are."""
    found: set[str] = set()
    for node in nodes:
        if node.kind is NodeKind.LLM:
            found.add(node.module.alias)
        elif node.kind is NodeKind.DYNAMIC:
            found.update(
                module.alias
                for module in node.module.modules()
                if module._plait_node_kind is NodeKind.LLM
            )
    return found


class Owner(Protocol):
    """Who waits for a sub-run (a call made inside a dynamic forward) to finish."""

    parent_run: Any

    def finished(self, state: ExecutionState) -> None: ...

    def qualified(self, node_id: str) -> str:
        """``node_id`` of the sub-run as observers see it, unique within its input."""
        ...


def plan_for(graph: InferenceGraph) -> GraphPlan:
    """The plan for ``graph``, built on first use and kept on the graph."""
    plan: GraphPlan | None = getattr(graph, "_plait_plan", None)
    if plan is None:
        plan = GraphPlan(graph)
        graph._plait_plan = plan  # type: ignore[attr-defined]
    return plan


def resolve(spec: Any, results: dict[str, Any]) -> Any:
    """Replace placeholders in ``spec`` by upstream results and current parameter values."""
    cls = spec.__class__
    if cls is NodeRef:
        return results[spec.id]
    if cls is Template:
        return "".join(
            [
                part
                if part.__class__ is str
                else to_text(results[part.id])
                if part.__class__ is NodeRef
                else part.param.value
                for part in spec.parts
            ]
        )
    if cls is ParamRef:
        return spec.param.value
    if cls is tuple:
        return tuple([resolve(item, results) for item in spec])
    if cls is list:
        return [resolve(item, results) for item in spec]
    if cls is dict:
        return {key: resolve(item, results) for key, item in spec.items()}
    return spec


_POSITIONS = tuple(f"input:{position}" for position in range(16))
"""Result names of the first positional inputs, so starting an input formats none."""


class ExecutionState:
    """Where one input's graph stands: pending, running, done, failed, cancelled."""

    __slots__ = (
        "_stale",
        "attempts",
        "cancelled",
        "checkpoint",
        "failed",
        "in_progress",
        "index",
        "input",
        "node_inputs",
        "outstanding",
        "owner",
        "pending",
        "plan",
        "rate_limited",
        "remaining",
        "results",
        "tapes",
    )

    def __init__(
        self,
        plan: GraphPlan,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        index: int = 0,
        input: Any = None,
    ) -> None:
        self.plan = plan
        self.index = index
        self.input = input
        results: dict[str, Any]
        if len(args) <= len(_POSITIONS):
            results = dict(zip(_POSITIONS, args, strict=False))
        else:
            results = {f"input:{position}": value for position, value in enumerate(args)}
        if kwargs:
            for key, value in kwargs.items():
                results[f"input:{key}"] = value
        self.results = results
        self.remaining = plan.remaining.copy()
        self.pending: list[tuple[int, int, str]] = plan.initial_keys.copy()
        self.in_progress: set[str] = set()
        self.failed: dict[str, BaseException] = {}
        self.cancelled: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.outstanding = plan.node_count
        self._stale: dict[str, int] = {}
        self.node_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] | None = None
        self.checkpoint: Any = None
        self.owner: Owner | None = None
        self.tapes: dict[str, Any] | None = None

    def restore(self, finished: dict[str, Any]) -> int:
        """Adopt results of nodes that finished in an earlier run; returns how many.

        Call before the state is scheduled. A node is adopted only if every
        node it depends on is adopted too, so a stored result never sits
        downstream of a node that will run again.
        """
        plan = self.plan
        inputs = plan.input_ids
        adopted = 0
        for node_id in plan.graph.topological_order():
            if node_id not in finished or node_id in inputs or node_id in self.results:
                continue
            dependencies = plan.nodes[node_id].dependencies
            if all(dep in inputs or dep in self.results for dep in dependencies):
                self.results[node_id] = finished[node_id]
                adopted += 1
        if not adopted:
            return 0
        results = self.results
        remaining = self.remaining
        for node_id in remaining:
            remaining[node_id] = sum(
                1
                for dep in plan.nodes[node_id].dependencies
                if dep not in inputs and dep not in results
            )
        keys = plan.keys
        self.pending = [
            keys[node_id]
            for node_id, count in remaining.items()
            if count == 0 and node_id not in results
        ]
        heapq.heapify(self.pending)
        self.outstanding -= adopted
        return adopted

    @property
    def completed(self) -> dict[str, Any]:
        """Results of finished nodes (input nodes included)."""
        return self.results

    @property
    def done(self) -> bool:
        return self.outstanding == 0 and not self.in_progress

    def next_key(self) -> tuple[int, int, str] | None:
        """Priority key of the next pending node, without taking it."""
        while self.pending and self.pending[0][2] in self.cancelled:
            heapq.heappop(self.pending)
        return self.pending[0] if self.pending else None

    def pop_next(self) -> str | None:
        """Take the most urgent pending node and mark it in progress."""
        while self.pending:
            node_id = heapq.heappop(self.pending)[2]
            if node_id not in self.cancelled:
                self.in_progress.add(node_id)
                return node_id
        return None

    def args_for(self, node: GraphNode) -> tuple[tuple[Any, ...], dict[str, Any]]:
        results = self.results
        args = tuple([resolve(arg, results) for arg in node.args]) if node.args else ()
        kwargs = (
            {key: resolve(arg, results) for key, arg in node.kwargs.items()} if node.kwargs else {}
        )
        return args, kwargs

    def mark_complete(self, node_id: str, value: Any) -> list[str]:
        """Record a result; returns the nodes that this made ready (already queued)."""
        self.in_progress.discard(node_id)
        if self._consume_stale(node_id):
            return []
        self.results[node_id] = value
        self.outstanding -= 1
        ready = []
        remaining = self.remaining
        keys = self.plan.keys
        for dependent in self.plan.nodes[node_id].dependents:
            count = remaining[dependent] - 1
            remaining[dependent] = count
            if count == 0 and dependent not in self.cancelled:
                heapq.heappush(self.pending, keys[dependent])
                ready.append(dependent)
        return ready

    def mark_failed(self, node_id: str, error: BaseException) -> list[str]:
        """Record a failure and cancel its descendants (only); returns the newly cancelled."""
        self.in_progress.discard(node_id)
        if self._consume_stale(node_id):
            return []
        self.failed[node_id] = error
        self.outstanding -= 1
        newly = []
        for descendant in self.plan.descendants(node_id):
            if (
                descendant not in self.cancelled
                and descendant not in self.failed
                and descendant not in self.results
            ):
                self.cancelled.add(descendant)
                self.outstanding -= 1
                newly.append(descendant)
        return newly

    def requeue(self, node_id: str) -> None:
        """Put ``node_id`` back in the queue and forget everything downstream of it.

        Downstream nodes that are running keep running, but their results are
        dropped when they arrive; they run again once ``node_id`` completes.
        """
        if node_id in self.in_progress:
            self.in_progress.discard(node_id)
        else:
            self._forget(node_id)
        for descendant in self.plan.descendants(node_id):
            if descendant in self.in_progress:
                self._stale[descendant] = self._stale.get(descendant, 0) + 1
                self.in_progress.discard(descendant)
            else:
                self._forget(descendant)
        self.pending = [key for key in self.pending if key[2] not in self.plan.descendants(node_id)]
        heapq.heapify(self.pending)
        for descendant in self.plan.descendants(node_id) | {node_id}:
            deps = self.plan.nodes[descendant].dependencies
            self.remaining[descendant] = sum(
                1 for dep in deps if dep not in self.results and dep not in self.plan.input_ids
            )
        heapq.heappush(self.pending, self.plan.keys[node_id])

    def abandon(self) -> None:
        """Start nothing more of this state (its caller stopped waiting for it).

        Nodes already running finish and are dropped; the rest are cancelled
        so the scheduler skips them.
        """
        for node_id in self.remaining:
            if (
                node_id not in self.results
                and node_id not in self.in_progress
                and node_id not in self.failed
                and node_id not in self.cancelled
            ):
                self.cancelled.add(node_id)
                self.outstanding -= 1

    def _forget(self, node_id: str) -> None:
        if node_id in self.results:
            del self.results[node_id]
            self.outstanding += 1
        elif node_id in self.failed:
            del self.failed[node_id]
            self.outstanding += 1
        elif node_id in self.cancelled:
            self.cancelled.discard(node_id)
            self.outstanding += 1

    def _consume_stale(self, node_id: str) -> bool:
        count = self._stale.get(node_id)
        if not count:
            return False
        if count == 1:
            del self._stale[node_id]
        else:
            self._stale[node_id] = count - 1
        return True

    def output(self) -> Any:
        """The value ``forward`` returned, with real results in place of placeholders."""
        return resolve(self.plan.output, self.results)

    def error(self) -> BaseException | None:
        """Why this input has no output, or None when it has one.

        A cancelled output points at the failure upstream of it, so the user
        sees the root cause rather than "cancelled".
        """
        for ref in self.plan.graph.output_ids:
            if ref in self.failed:
                return self.failed[ref]
            if ref in self.cancelled:
                for ancestor in self.plan.graph.topological_order():
                    if ancestor in self.failed and ref in self.plan.descendants(ancestor):
                        return self.failed[ancestor]
                return CancelledNodeError(f"node {ref!r} was cancelled")
        return None


def forward_record(state: ExecutionState, output: Any, resources: Any) -> ForwardRecord:
    """What backward needs of a finished state: its graph, every node's inputs and
    outputs, and the records of what ran inside its dynamic nodes."""
    return ForwardRecord(
        state.plan.graph,
        state.node_inputs or {},
        dict(state.results),
        output,
        resources,
        subrecords=dict(state.tapes) if state.tapes else {},
    )
