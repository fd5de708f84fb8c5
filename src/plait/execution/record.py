"""What a training-mode forward pass keeps for the backward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plait.graph import InferenceGraph


@dataclass(eq=False, slots=True)
class ForwardRecord:
    """The graph of one input's run, with every node's resolved inputs and output.

    Backward walks ``graph`` in reverse topological order and hands each node
    what it actually saw (``node_inputs``) and produced (``node_outputs``), so
    feedback is written about the real prompts and replies, not templates.
    """

    graph: InferenceGraph
    node_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    node_outputs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    released: bool = False

    def release(self) -> None:
        """Drop the recorded values; the graph stays for inspection."""
        self.node_inputs = {}
        self.node_outputs = {}
        self.released = True
