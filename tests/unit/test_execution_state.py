"""ExecutionState: the per-input bookkeeping the scheduler drives.

These tests drive states by hand (pop a node, complete or fail it) on graphs
traced from small modules, so every transition is visible without an event
loop.
"""

from __future__ import annotations

from typing import Any

import pytest

from plait import LLMInference, Module, Parameter, trace
from plait.errors import CancelledNodeError, PermanentError
from plait.execution.state import ExecutionState, GraphPlan, plan_for, resolve
from plait.graph import InferenceGraph, NodeRef, ParamRef, Template
from support.modules import Chain, FanOut, TwoBranches


class Wide(Module):
    """Four independent calls; the test sets their priorities."""

    def __init__(self) -> None:
        super().__init__()
        self.a = LLMInference("fast")
        self.b = LLMInference("fast")
        self.c = LLMInference("fast")
        self.d = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.a(text), self.b(text), self.c(text), self.d(text)


class Pipeline(Module):
    """a -> b -> c in series, plus an independent d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = LLMInference("fast")
        self.b = LLMInference("fast")
        self.c = LLMInference("fast")
        self.d = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.c(f"c:{self.b(f'b:{self.a(text)}')}"), self.d(text)


def state_for(module: Module, *args: Any) -> ExecutionState:
    return ExecutionState(GraphPlan(trace(module, *args)), args)


def pop_all(state: ExecutionState) -> list[str]:
    popped = []
    while (node_id := state.pop_next()) is not None:
        popped.append(node_id)
    return popped


# -- pending order -----------------------------------------------------------------


def test_pending_pops_higher_priority_first_then_graph_order() -> None:
    graph = trace(Wide(), "x")
    graph.nodes["c"].priority = 5
    graph.nodes["d"].priority = 5
    graph.nodes["a"].priority = -1
    state = ExecutionState(GraphPlan(graph), ("x",))

    assert state.next_key() is not None
    assert state.next_key()[2] == "c"  # type: ignore[index]
    assert pop_all(state) == ["c", "d", "b", "a"]
    assert state.in_progress == {"a", "b", "c", "d"}


def test_only_nodes_without_pending_dependencies_start_ready() -> None:
    state = state_for(FanOut(3), "x")
    assert sorted(pop_all(state)) == ["branch0", "branch1", "branch2"]


# -- completion --------------------------------------------------------------------


def test_mark_complete_returns_the_nodes_it_made_ready() -> None:
    state = state_for(FanOut(2), "x")
    assert pop_all(state) == ["branch0", "branch1"]

    assert state.mark_complete("branch0", "zero") == []
    assert state.pop_next() is None
    assert state.mark_complete("branch1", "one") == ["join"]
    assert state.pop_next() == "join"
    assert not state.done

    assert state.mark_complete("join", "joined") == []
    assert state.done
    assert state.error() is None
    assert state.output() == "joined"
    assert state.completed["branch0"] == "zero"


def test_output_structure_is_rebuilt_from_results() -> None:
    state = state_for(TwoBranches(), "x")
    for node_id, value in [
        ("left.first", "l1"),
        ("right.first", "r1"),
        ("left.second", "l2"),
        ("right.second", "r2"),
    ]:
        state.pop_next()
        state.mark_complete(node_id, value)
    assert state.done
    assert state.output() == ("l2", "r2")


# -- failure -----------------------------------------------------------------------


def test_mark_failed_cancels_descendants_only() -> None:
    state = state_for(TwoBranches(), "x")
    assert sorted(pop_all(state)) == ["left.first", "right.first"]
    error = PermanentError("left broke")

    assert state.mark_failed("left.first", error) == ["left.second"]
    assert state.cancelled == {"left.second"}
    assert state.failed == {"left.first": error}
    assert not state.done

    # The independent branch carries on to the end.
    assert state.mark_complete("right.first", "r1") == ["right.second"]
    assert state.pop_next() == "right.second"
    state.mark_complete("right.second", "r2")
    assert state.done
    assert state.results["right.second"] == "r2"
    assert "left.second" not in state.results


def test_error_of_a_cancelled_output_is_the_upstream_cause() -> None:
    state = state_for(Chain(), "x")
    state.pop_next()
    cause = PermanentError("first failed")
    state.mark_failed("first", cause)
    assert state.done
    assert state.error() is cause


def test_cancelled_nodes_are_never_popped() -> None:
    state = state_for(FanOut(2), "x")
    pop_all(state)
    state.mark_complete("branch0", "zero")
    state.mark_failed("branch1", PermanentError("no"))
    assert state.cancelled == {"join"}
    assert state.pop_next() is None
    assert state.next_key() is None
    assert state.done


def test_error_without_a_failed_ancestor_is_a_cancellation() -> None:
    state = state_for(Chain(), "x")
    state.cancelled.add("second")
    assert isinstance(state.error(), CancelledNodeError)


# -- requeue -----------------------------------------------------------------------


def finish(state: ExecutionState, values: dict[str, Any]) -> list[str]:
    """Pop and complete nodes until the state is done; returns the order they ran."""
    order = []
    while (node_id := state.pop_next()) is not None:
        order.append(node_id)
        state.mark_complete(node_id, values[node_id])
    return order


def test_requeue_forgets_descendants_and_recomputes_them() -> None:
    state = state_for(Pipeline(), "x")
    finish(state, {"a": "a1", "b": "b1", "c": "c1", "d": "d1"})
    assert state.done
    assert state.output() == ("c1", "d1")

    state.requeue("a")
    assert not state.done
    for forgotten in ("a", "b", "c"):
        assert forgotten not in state.results
    assert state.results["d"] == "d1"  # not downstream of a: kept
    assert state.outstanding == 3

    # b and c wait for a again: only a is runnable.
    assert state.pop_next() == "a"
    assert state.pop_next() is None
    assert state.mark_complete("a", "a2") == ["b"]
    assert finish(state, {"b": "b2", "c": "c2"}) == ["b", "c"]
    assert state.done
    assert state.output() == ("c2", "d1")


def test_requeue_of_an_in_progress_node_puts_it_back() -> None:
    state = state_for(Chain(), "x")
    assert state.pop_next() == "first"
    state.requeue("first")
    assert "first" not in state.in_progress
    assert state.pop_next() == "first"
    assert state.pop_next() is None


def test_requeue_drops_results_of_descendants_still_running() -> None:
    state = state_for(Pipeline(), "x")
    assert pop_all(state) == ["a", "d"]
    state.mark_complete("d", "d1")
    state.mark_complete("a", "a1")
    assert state.pop_next() == "b"

    state.requeue("a")
    # b's reply arrives after the requeue: it was computed from the old a.
    assert state.mark_complete("b", "stale") == []
    assert "b" not in state.results

    assert state.pop_next() == "a"
    assert state.mark_complete("a", "a2") == ["b"]
    assert finish(state, {"b": "b2", "c": "c2"}) == ["b", "c"]
    assert state.done
    assert state.output() == ("c2", "d1")


def test_requeue_revives_cancelled_descendants() -> None:
    state = state_for(Chain(), "x")
    state.pop_next()
    state.mark_failed("first", PermanentError("boom"))
    assert state.done

    state.requeue("first")
    assert not state.done
    assert not state.failed
    assert not state.cancelled
    assert finish(state, {"first": "f", "second": "s"}) == ["first", "second"]
    assert state.error() is None
    assert state.output() == "s"


# -- placeholders ------------------------------------------------------------------


def test_resolve_substitutes_every_kind_of_placeholder() -> None:
    param = Parameter("be brief", requires_grad=False)
    results: dict[str, Any] = {"n1": "one", "n2": {"k": [1, 2]}}
    spec = {
        "ref": NodeRef("n1"),
        "text": Template(("A=", NodeRef("n1"), "; B=", NodeRef("n2"), "; P=", ParamRef(param))),
        "param": ParamRef(param),
        "nested": [NodeRef("n2"), (NodeRef("n1"), "plain", 3)],
        "literal": 7,
    }
    assert resolve(spec, results) == {
        "ref": "one",
        "text": 'A=one; B={"k": [1, 2]}; P=be brief',
        "param": "be brief",
        "nested": [{"k": [1, 2]}, ("one", "plain", 3)],
        "literal": 7,
    }


def test_parameter_placeholders_read_the_value_at_resolve_time() -> None:
    param = Parameter("old", requires_grad=False)
    spec = Template(("sys:", ParamRef(param)))
    param.value = "new"
    assert resolve(spec, {}) == "sys:new"


class Composer(Module):
    """Composes a prompt from two upstream replies, a Parameter and a nested structure."""

    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("terse", requires_grad=False)
        self.a = LLMInference("fast")
        self.b = LLMInference("fast")
        self.sink = Collect()

    def forward(self, text: str) -> Any:
        first = self.a(text)
        second = self.b(text)
        return self.sink(
            f"[{self.style}] {first} + {second}",
            pair=[first, {"b": second}, (text,)],
        )


class Collect(Module):
    def forward(self, prompt: str, pair: Any) -> Any:
        return prompt, pair


def test_args_for_fills_composed_prompts_and_nested_arguments() -> None:
    graph: InferenceGraph = trace(Composer(), "x")
    state = ExecutionState(plan_for(graph), ("the input",))
    finish_upstream = {"a": "A-out", "b": "B-out"}
    for node_id in pop_all(state):
        state.mark_complete(node_id, finish_upstream[node_id])
    assert state.pop_next() == "sink"

    args, kwargs = state.args_for(graph.nodes["sink"])
    assert args == ("[terse] A-out + B-out",)
    assert kwargs == {"pair": ["A-out", {"b": "B-out"}, ("the input",)]}
    # Structured upstream values are composed into prompts as JSON.
    state.results["a"] = {"score": 1}
    assert state.args_for(graph.nodes["sink"])[0] == ('[terse] {"score": 1} + B-out',)


def test_plan_is_built_once_per_graph() -> None:
    graph = trace(Chain(), "x")
    assert plan_for(graph) is plan_for(graph)
    assert plan_for(graph).aliases == ("fast",)


@pytest.mark.parametrize("width", [1, 4])
def test_outstanding_counts_every_non_input_node(width: int) -> None:
    state = state_for(FanOut(width), "x")
    assert state.outstanding == width + 1
