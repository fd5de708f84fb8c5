"""InferenceGraph: ordering, reachability and the DOT / Mermaid renderers."""

from __future__ import annotations

import re

import pytest

import plait
from plait import LLMInference, Module
from plait.graph import GraphNode, InferenceGraph, NodeKind, NodeRef


def build(edges: list[tuple[str, str]], nodes: list[str]) -> InferenceGraph:
    """A graph with ``nodes`` (in recording order) wired by (dependency, dependent) edges."""
    by_id = {
        nid: GraphNode(
            id=nid,
            module=None if nid.startswith("input") else LLMInference("a"),
            kind=NodeKind.INPUT if nid.startswith("input") else NodeKind.LLM,
        )
        for nid in nodes
    }
    for dep, nid in edges:
        by_id[nid].dependencies.append(dep)
        by_id[dep].dependents.append(nid)
    inputs = [nid for nid in nodes if nid.startswith("input")]
    return InferenceGraph(by_id, inputs, [nodes[-1]])


DIAMOND_EDGES = [
    ("input:0", "a"),
    ("input:0", "b"),
    ("a", "c"),
    ("b", "c"),
    ("c", "d"),
    ("input:0", "e"),
]
DIAMOND_NODES = ["input:0", "a", "b", "c", "e", "d"]


@pytest.fixture
def diamond() -> InferenceGraph:
    return build(DIAMOND_EDGES, DIAMOND_NODES)


def test_topological_order_puts_every_node_after_its_dependencies(
    diamond: InferenceGraph,
) -> None:
    order = diamond.topological_order()
    assert sorted(order) == sorted(DIAMOND_NODES)
    for dep, nid in DIAMOND_EDGES:
        assert order.index(dep) < order.index(nid)


def test_topological_order_breaks_ties_by_recording_order(diamond: InferenceGraph) -> None:
    assert diamond.topological_order() == ["input:0", "a", "b", "e", "c", "d"]


def test_topological_order_returns_a_copy(diamond: InferenceGraph) -> None:
    diamond.topological_order().clear()
    assert len(diamond.topological_order()) == 6


def test_cycle_is_reported_with_its_nodes() -> None:
    graph = build([("input:0", "a"), ("a", "b"), ("b", "a")], ["input:0", "a", "b"])
    with pytest.raises(ValueError, match=r"cycle through nodes \['a', 'b'\]"):
        graph.topological_order()


def test_descendants_and_ancestors(diamond: InferenceGraph) -> None:
    assert diamond.descendants("input:0") == {"a", "b", "c", "d", "e"}
    assert diamond.descendants("a") == {"c", "d"}
    assert diamond.descendants("d") == set()
    assert diamond.ancestors("d") == {"c", "a", "b", "input:0"}
    assert diamond.ancestors("e") == {"input:0"}
    assert diamond.ancestors("input:0") == set()


def test_reachability_of_unknown_node_is_a_key_error(diamond: InferenceGraph) -> None:
    with pytest.raises(KeyError, match="nope"):
        diamond.descendants("nope")
    with pytest.raises(KeyError, match="nope"):
        diamond.ancestors("nope")


def test_edges_lists_every_dependency_once(diamond: InferenceGraph) -> None:
    assert sorted(diamond.edges()) == sorted(DIAMOND_EDGES)
    assert len(diamond.edges()) == len(DIAMOND_EDGES)


def test_len_repr_and_labels(diamond: InferenceGraph) -> None:
    assert len(diamond) == 6
    assert repr(diamond) == "InferenceGraph(nodes=6, inputs=['input:0'], outputs=['d'])"
    assert diamond.nodes["input:0"].label == "input:0"
    assert diamond.nodes["a"].label == "a: LLMInference"


def test_default_output_structure() -> None:
    single = InferenceGraph({}, [], ["x"])
    assert single.output == NodeRef("x")
    several = InferenceGraph({}, [], ["x", "y"])
    assert several.output == (NodeRef("x"), NodeRef("y"))
    explicit_none = InferenceGraph({}, [], [], output=None)
    assert explicit_none.output is None


def test_graph_node_defaults() -> None:
    node = GraphNode(id="n", module=None)
    assert node.args == ()
    assert node.kwargs == {}
    assert node.dependencies == []
    assert node.dependents == []
    assert node.module_path == ""
    assert node.priority == 0
    assert node.kind is NodeKind.OP
    assert GraphNode(id="m", module=None).dependencies is not node.dependencies


# -- renderers (parse-level) ---------------------------------------------------------

_DOT_ID = r'"((?:[^"\\]|\\.)*)"'
_DOT_NODE = re.compile(rf"^  {_DOT_ID} \[label={_DOT_ID}, shape=(box|ellipse)\];$")
_DOT_EDGE = re.compile(rf"^  {_DOT_ID} -> {_DOT_ID};$")


def _dot_unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_dot(source: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]:
    lines = source.splitlines()
    assert lines[0] == "digraph plait {"
    assert lines[-1] == "}"
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[1:-1]:
        if line == "  rankdir=TB;":
            continue
        if match := _DOT_NODE.match(line):
            nodes[_dot_unquote(match[1])] = (_dot_unquote(match[2]), match[3])
        elif match := _DOT_EDGE.match(line):
            edges.append((_dot_unquote(match[1]), _dot_unquote(match[2])))
        else:
            raise AssertionError(f"unparseable DOT line: {line!r}")
    return nodes, edges


_MERMAID_NODE = re.compile(r'^    ([A-Za-z0-9_]+)(\(\[|\[)"([^"]*)"(\]\)|\])$')
_MERMAID_EDGE = re.compile(r"^    ([A-Za-z0-9_]+) --> ([A-Za-z0-9_]+)$")


def parse_mermaid(source: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]:
    lines = source.splitlines()
    assert lines[0] == "flowchart TD"
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        if match := _MERMAID_NODE.match(line):
            shape = "stadium" if match[2] == "([" else "box"
            assert (match[2], match[4]) in {("([", "])"), ("[", "]")}
            nodes[match[1]] = (match[3], shape)
        elif match := _MERMAID_EDGE.match(line):
            edges.append((match[1], match[2]))
        else:
            raise AssertionError(f"unparseable Mermaid line: {line!r}")
    return nodes, edges


class Awkward(Module):
    """Node ids with characters that need quoting or escaping in both renderers."""

    def __init__(self) -> None:
        super().__init__()
        self.register_module('say "hi"', LLMInference("a"))
        self.register_module("x-y z", LLMInference("b"))
        self.join = LLMInference("c")

    def forward(self, text: str) -> str:
        first = self._modules['say "hi"'](text)
        second = self._modules["x-y z"](text)
        return self.join(f"{first} {second} {self.join(first)}")


def test_to_dot_contains_every_node_and_edge(diamond: InferenceGraph) -> None:
    nodes, edges = parse_dot(diamond.to_dot())
    assert set(nodes) == set(DIAMOND_NODES)
    assert nodes["input:0"] == ("input:0", "ellipse")
    assert nodes["c"] == ("c: LLMInference", "box")
    assert sorted(edges) == sorted(DIAMOND_EDGES)


def test_to_dot_escapes_awkward_ids() -> None:
    graph = plait.trace(Awkward(), "q")
    nodes, edges = parse_dot(graph.to_dot())
    assert set(nodes) == set(graph.nodes)
    assert 'say "hi"' in nodes
    assert "join#2" in nodes
    assert sorted(edges) == sorted(graph.edges())


def mermaid_node_ids(nodes: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Map Mermaid's safe ids back to graph node ids through the labels."""
    found = {}
    for safe, (label, shape) in nodes.items():
        text = label.replace("#quot;", '"')
        found[safe] = text if shape == "stadium" else text.rsplit(": ", 1)[0]
    return found


def test_to_mermaid_contains_every_node_and_edge(diamond: InferenceGraph) -> None:
    nodes, edges = parse_mermaid(diamond.to_mermaid())
    ids = mermaid_node_ids(nodes)
    assert sorted(ids.values()) == sorted(DIAMOND_NODES)
    shapes = {ids[safe]: shape for safe, (_, shape) in nodes.items()}
    assert shapes["input:0"] == "stadium"
    assert shapes["d"] == "box"
    assert sorted((ids[a], ids[b]) for a, b in edges) == sorted(DIAMOND_EDGES)


def test_to_mermaid_makes_awkward_ids_safe_and_distinct() -> None:
    graph = plait.trace(Awkward(), "q")
    nodes, edges = parse_mermaid(graph.to_mermaid())
    ids = mermaid_node_ids(nodes)
    assert sorted(ids.values()) == sorted(graph.nodes)
    assert 'say "hi"' in ids.values()
    assert "join#2" in ids.values()
    assert sorted((ids[a], ids[b]) for a, b in edges) == sorted(graph.edges())


def test_traced_graph_round_trips_through_both_renderers() -> None:
    class Fan(Module):
        def __init__(self) -> None:
            super().__init__()
            self.one = LLMInference("a")
            self.two = LLMInference("a")
            self.merge = LLMInference("b")

        def forward(self, text: str) -> str:
            return self.merge(f"{self.one(text)} + {self.two(text)}")

    graph = plait.trace(Fan(), "q")
    dot_nodes, dot_edges = parse_dot(graph.to_dot())
    assert set(dot_nodes) == {"input:0", "one", "two", "merge"}
    assert sorted(dot_edges) == sorted(graph.edges())
    mermaid_nodes, mermaid_edges = parse_mermaid(graph.to_mermaid())
    ids = mermaid_node_ids(mermaid_nodes)
    assert sorted(ids.values()) == sorted(dot_nodes)
    assert sorted((ids[a], ids[b]) for a, b in mermaid_edges) == sorted(dot_edges)
