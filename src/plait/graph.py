"""The traced form of a module: nodes, the edges between them, and renderers.

A node's ``args``/``kwargs`` keep the call's arguments with placeholders where
upstream results go: :class:`NodeRef` for a value passed as is, :class:`Template`
for a string that was composed from traced values (an f-string, ``+``, ``join``,
``str.format``) and :class:`ParamRef` for a Parameter whose *current* value is
read at run time. Because the placeholders are data, one graph serves every
input of a batch.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from plait.errors import GraphError, UnknownNodeError


class ParameterLike(Protocol):
    """What the graph and its walkers need from a learnable prompt.

    Structural, because the graph sits below the user layer that defines
    :class:`plait.parameter.Parameter`; that class is the one implementation.
    """

    value: str
    description: str | None
    requires_grad: bool

    def accumulate_feedback(self, text: str, *, upstream: Iterable[Any] = ()) -> None: ...

    def record_score(self, score: float) -> None: ...


class NodeKind(enum.Enum):
    """How the executor runs a node: inputs are given, LLM calls go to the
    resource manager, a dynamic module's ``async def forward`` runs as a task
    whose child calls are sub-runs, everything else runs its ``forward`` on
    real values."""

    INPUT = "input"
    LLM = "llm"
    OP = "op"
    DYNAMIC = "dynamic"


@dataclass(frozen=True, slots=True)
class NodeRef:
    """Stands for the whole output of node ``id``."""

    id: str


@dataclass(frozen=True, slots=True, eq=False)
class ParamRef:
    """Stands for the value a ParameterLike holds when the node runs."""

    param: ParameterLike


@dataclass(frozen=True, slots=True)
class Template:
    """A string built from literal text and placeholders, rendered at run time."""

    parts: tuple[str | NodeRef | ParamRef, ...]

    def refs(self) -> Iterator[str]:
        for part in self.parts:
            if isinstance(part, NodeRef):
                yield part.id


@dataclass(eq=False, slots=True)
class GraphNode:
    """One call recorded while tracing."""

    id: str
    module: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    dependencies: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    module_path: str = ""
    priority: int = 0
    kind: NodeKind = NodeKind.OP
    parameters: tuple[ParameterLike, ...] = ()

    @property
    def label(self) -> str:
        if self.kind is NodeKind.INPUT:
            return self.id
        if self.kind is NodeKind.DYNAMIC:
            return f"{self.id}: {type(self.module).__name__} (dynamic)"
        return f"{self.id}: {type(self.module).__name__}"


_DEFAULT_OUTPUT: Any = object()
"""Marks "no output structure given", so a forward that returns None keeps None."""


class InferenceGraph:
    """A DAG of :class:`GraphNode` plus where its inputs enter and its output leaves.

    ``output`` is the structure ``forward`` returned, with placeholders, so a
    module may return a single value, a tuple, a dict or a composed string.
    """

    def __init__(
        self,
        nodes: Mapping[str, GraphNode],
        input_ids: Iterable[str],
        output_ids: Iterable[str],
        parameters: Mapping[str, ParameterLike] | None = None,
        output: Any = _DEFAULT_OUTPUT,
    ) -> None:
        self.nodes: dict[str, GraphNode] = dict(nodes)
        self.input_ids: list[str] = list(input_ids)
        self.output_ids: list[str] = list(output_ids)
        self.parameters: dict[str, ParameterLike] = dict(parameters or {})
        self.output: Any = _default_output(self.output_ids) if output is _DEFAULT_OUTPUT else output
        self._order: list[str] | None = None

    def __repr__(self) -> str:
        return (
            f"InferenceGraph(nodes={len(self.nodes)}, inputs={self.input_ids}, "
            f"outputs={self.output_ids})"
        )

    def __len__(self) -> int:
        return len(self.nodes)

    def edges(self) -> list[tuple[str, str]]:
        """Every (dependency, dependent) pair, in topological order of the dependent."""
        return [
            (dep, nid) for nid in self.topological_order() for dep in self.nodes[nid].dependencies
        ]

    def topological_order(self) -> list[str]:
        """Node ids so that every node follows all of its dependencies.

        Ties keep the order nodes were recorded in, which makes the order
        deterministic and close to the order the user wrote the calls.
        """
        if self._order is None:
            remaining = {nid: len(node.dependencies) for nid, node in self.nodes.items()}
            ready = deque(nid for nid, count in remaining.items() if count == 0)
            order: list[str] = []
            while ready:
                nid = ready.popleft()
                order.append(nid)
                for dependent in self.nodes[nid].dependents:
                    remaining[dependent] -= 1
                    if remaining[dependent] == 0:
                        ready.append(dependent)
            if len(order) != len(self.nodes):
                stuck = sorted(nid for nid, count in remaining.items() if count > 0)
                raise GraphError(f"graph has a cycle through nodes {stuck}")
            self._order = order
        return list(self._order)

    def descendants(self, node_id: str) -> set[str]:
        """Every node that depends, directly or not, on ``node_id``."""
        return self._walk(node_id, "dependents")

    def ancestors(self, node_id: str) -> set[str]:
        """Every node that ``node_id`` depends on, directly or not."""
        return self._walk(node_id, "dependencies")

    def _walk(self, node_id: str, direction: str) -> set[str]:
        if node_id not in self.nodes:
            raise UnknownNodeError(f"no node {node_id!r} in this graph")
        seen: set[str] = set()
        stack = list(getattr(self.nodes[node_id], direction))
        while stack:
            nid = stack.pop()
            if nid not in seen:
                seen.add(nid)
                stack.extend(getattr(self.nodes[nid], direction))
        return seen

    def to_dot(self) -> str:
        """Graphviz source; inputs are drawn as ellipses, calls as boxes."""
        lines = ["digraph plait {", "  rankdir=TB;"]
        for nid in self.topological_order():
            node = self.nodes[nid]
            shape = "ellipse" if node.kind is NodeKind.INPUT else "box"
            style = ", style=dashed" if node.kind is NodeKind.DYNAMIC else ""
            lines.append(
                f"  {_dot_quote(nid)} [label={_dot_quote(node.label)}, shape={shape}{style}];"
            )
        lines.extend(f"  {_dot_quote(a)} -> {_dot_quote(b)};" for a, b in self.edges())
        lines.append("}")
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """Mermaid flowchart source, with ids made safe for Mermaid's grammar."""
        safe = {
            nid: f"n{index}_{_MERMAID_UNSAFE.sub('_', nid)}" for index, nid in enumerate(self.nodes)
        }
        lines = ["flowchart TD"]
        for nid in self.topological_order():
            node = self.nodes[nid]
            text = node.label.replace('"', "#quot;")
            open_, close = _MERMAID_SHAPES.get(node.kind, ("[", "]"))
            lines.append(f'    {safe[nid]}{open_}"{text}"{close}')
        lines.extend(f"    {safe[a]} --> {safe[b]}" for a, b in self.edges())
        return "\n".join(lines)


_MERMAID_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_MERMAID_SHAPES = {NodeKind.INPUT: ("([", "])"), NodeKind.DYNAMIC: ("[[", "]]")}
"""Inputs are stadiums, dynamic modules subroutine boxes (their calls are decided at run time)."""


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _default_output(output_ids: list[str]) -> Any:
    if len(output_ids) == 1:
        return NodeRef(output_ids[0])
    return tuple(NodeRef(nid) for nid in output_ids)


@dataclass(eq=False, slots=True)
class ForwardRecord:
    """The graph of one input's run, with every node's resolved inputs and output.

    Backward walks ``graph`` in reverse topological order and hands each node
    what it actually saw (``node_inputs``) and produced (``node_outputs``), so
    feedback is written about the real prompts and replies, not templates.
    ``resources`` is the manager the run used, so a loss on the output and the
    backward pass through it reach the same endpoints without binding them
    again (typed loosely: the resource layer sits above this one).
    ``subrecords`` holds, for a node that ran more than one call (a dynamic
    module's tape, a traced child run as a sub-run), the record of what ran
    inside it, so backward treats that node as composite.
    """

    graph: InferenceGraph
    node_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    node_outputs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    resources: Any = None
    released: bool = False
    subrecords: dict[str, ForwardRecord] = field(default_factory=dict)

    def release(self) -> None:
        """Drop the recorded values; the graph stays for inspection."""
        for sub in self.subrecords.values():
            sub.release()
        self.node_inputs = {}
        self.node_outputs = {}
        self.released = True
