"""The tape of a dynamic forward: the calls it made, as a graph backward can walk.

A traced graph knows its edges before it runs; a dynamic forward's edges
are found afterwards, from values. A call depends on an earlier one when
it was handed that call's output as is, or when the earlier output's text
(or, for a structured output, the text of one of its fields) appears in
one of its string arguments. The forward's own inputs are found the same
way, so feedback travels on to whatever produced them. The result is an
ordinary :class:`ForwardRecord`, so the feedback walk needs no second
algorithm for dynamic modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plait.graph import ForwardRecord, GraphNode, InferenceGraph, NodeKind, NodeRef, Template
from plait.values import Value, to_text

MIN_LINK_TEXT = 3
"""Texts shorter than this never make an edge: "ok" in a prompt proves nothing."""


class _Sources:
    """Texts and objects seen so far, each naming the node that produced it."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.objects: dict[int, str] = {}

    def add(self, node_id: str, value: Any) -> None:
        self.objects[id(value)] = node_id
        # Longest first; among equal texts the latest producer wins (it is the
        # one a loop's next round was built from).
        self.texts = [(text, node_id) for text in _texts_of(value)] + self.texts
        self.texts.sort(key=lambda pair: -len(pair[0]))

    def link(self, value: Any, deps: list[str]) -> Any:
        """``value`` with placeholders where earlier outputs went in; ``deps`` collects them."""
        found = self.objects.get(id(value))
        if found is not None and not isinstance(value, int | float | bool | None):
            deps.append(found)
            return NodeRef(found)
        if isinstance(value, str):
            return self._split(value, deps)
        if isinstance(value, list):
            return [self.link(item, deps) for item in value]
        if isinstance(value, tuple):
            return tuple(self.link(item, deps) for item in value)
        if isinstance(value, dict):
            return {key: self.link(item, deps) for key, item in value.items()}
        return value

    def _split(self, text: str, deps: list[str]) -> Any:
        parts: list[str | NodeRef] = []
        position = 0
        while True:
            best: tuple[int, str, str] | None = None
            for needle, node_id in self.texts:
                at = text.find(needle, position)
                if at >= 0 and (best is None or at < best[0]):
                    best = (at, needle, node_id)
            if best is None:
                break
            at, needle, node_id = best
            if at > position:
                parts.append(text[position:at])
            parts.append(NodeRef(node_id))
            deps.append(node_id)
            position = at + len(needle)
        if not parts:
            return text
        if position < len(text):
            parts.append(text[position:])
        return Template(tuple(parts))


def _texts_of(value: Any) -> list[str]:
    payload = value.payload if isinstance(value, Value) else value
    texts = [to_text(payload)]
    fields = payload.model_dump() if hasattr(payload, "model_dump") else payload
    if isinstance(fields, dict):
        texts.extend(item for item in fields.values() if isinstance(item, str))
    return [text for text in dict.fromkeys(texts) if len(text.strip()) >= MIN_LINK_TEXT]


def build_tape(
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    entries: Sequence[Any],
    output: Any,
    resources: Any,
) -> ForwardRecord:
    """The record of one dynamic forward: a node per call, edges found from values.

    The output node is the call whose output the forward returned (the same
    object or the same text); failing that, the calls whose text the return
    value contains; failing that, the last call.
    """
    names = {id(child): name for name, child in module.named_modules() if name}
    nodes: dict[str, GraphNode] = {}
    sources = _Sources()
    input_ids: list[str] = []
    given: list[tuple[int | str, Any]] = [*enumerate(args), *kwargs.items()]
    for key, value in given:
        node_id = f"input:{key}"
        nodes[node_id] = GraphNode(node_id, None, kind=NodeKind.INPUT, module_path=node_id)
        input_ids.append(node_id)
        sources.add(node_id, value)
    node_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    node_outputs: dict[str, Any] = {}
    subrecords: dict[str, ForwardRecord] = {}
    called: list[str] = []
    for entry in sorted(entries, key=lambda item: item.seq):
        path = names.get(id(entry.module)) or type(entry.module).__name__.lower()
        node_id = f"{path}#{entry.seq}"
        deps: list[str] = []
        spec_args = tuple(sources.link(item, deps) for item in entry.args)
        spec_kwargs = {key: sources.link(item, deps) for key, item in entry.kwargs.items()}
        dependencies = list(dict.fromkeys(deps))
        own = entry.module.parameters() if hasattr(entry.module, "parameters") else ()
        nodes[node_id] = GraphNode(
            node_id,
            entry.module,
            spec_args,
            spec_kwargs,
            dependencies,
            module_path=path,
            kind=getattr(entry.module, "_plait_node_kind", NodeKind.OP),
            parameters=tuple(dict.fromkeys(own)),
        )
        for dep in dependencies:
            nodes[dep].dependents.append(node_id)
        node_inputs[node_id] = (entry.args, entry.kwargs)
        node_outputs[node_id] = entry.output
        if entry.subrecord is not None:
            subrecords[node_id] = entry.subrecord
        sources.add(node_id, entry.output)
        called.append(node_id)
    graph = InferenceGraph(nodes, input_ids, _output_ids(called, node_outputs, output, sources))
    return ForwardRecord(graph, node_inputs, node_outputs, output, resources, subrecords=subrecords)


def _output_ids(
    called: list[str], outputs: dict[str, Any], output: Any, sources: _Sources
) -> list[str]:
    if not called:
        return []
    text = to_text(output)
    for node_id in reversed(called):
        if outputs[node_id] is output or to_text(outputs[node_id]) == text:
            return [node_id]
    deps: list[str] = []
    sources.link(text, deps)
    inside = [node_id for node_id in dict.fromkeys(deps) if node_id in outputs]
    return inside or [called[-1]]
