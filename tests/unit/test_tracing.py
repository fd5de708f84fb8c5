"""Tracing: leaf vs composite calls, prompt composition, selections, refusals, caching."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

import plait
from plait import LLMInference, Module, Parameter
from plait.errors import PlaitError, TracingError
from plait.graph import NodeKind, NodeRef, ParamRef, Template
from plait.tracing import Proxy, Tracer, current_tracer
from plait.tracing.context import tracing
from plait.tracing.ops import Select
from support.resources import echo_resources

TOKEN_CHARS = ("\ue000", "\ue001")


def assert_clean(prompts: list[str]) -> None:
    """No prompt may carry a trace token or a proxy's repr to the model."""
    for prompt in prompts:
        assert not any(char in prompt for char in TOKEN_CHARS), prompt
        assert "traced output" not in prompt, prompt


# -- the DESIGN's fan-out / fan-in example -----------------------------------------


class FanOutFanIn(Module):
    """Three independent analyses of the input, then one call that joins them."""

    def __init__(self) -> None:
        super().__init__()
        self.facts = LLMInference("fast")
        self.risks = LLMInference("fast")
        self.ideas = LLMInference("fast")
        self.join = LLMInference("smart")

    def forward(self, text: str) -> str:
        facts = self.facts(f"Facts in: {text}")
        risks = self.risks(f"Risks in: {text}")
        ideas = self.ideas(f"Ideas for: {text}")
        return self.join(f"Facts: {facts}\nRisks: {risks}\nIdeas: {ideas}")


def test_fan_out_fan_in_has_exactly_the_expected_edges() -> None:
    graph = plait.trace(FanOutFanIn(), "q")

    assert set(graph.nodes) == {"input:0", "facts", "risks", "ideas", "join"}
    assert set(graph.edges()) == {
        ("input:0", "facts"),
        ("input:0", "risks"),
        ("input:0", "ideas"),
        ("facts", "join"),
        ("risks", "join"),
        ("ideas", "join"),
    }
    assert len(graph.edges()) == 6
    assert graph.input_ids == ["input:0"]
    assert graph.output_ids == ["join"]
    assert graph.nodes["join"].dependencies == ["facts", "risks", "ideas"]
    assert graph.nodes["input:0"].kind is NodeKind.INPUT
    assert all(graph.nodes[nid].kind is NodeKind.LLM for nid in ("facts", "risks", "ideas"))


def test_trace_runs_nothing() -> None:
    resources = echo_resources()
    module = FanOutFanIn().bind(resources)
    plait.trace(module, "q")
    assert resources.calls == []


async def test_fan_in_call_receives_the_real_replies() -> None:
    resources = echo_resources()
    output = await FanOutFanIn().bind(resources)("q")

    expected_join = (
        "Facts: [fast] Facts in: q\nRisks: [fast] Risks in: q\nIdeas: [fast] Ideas for: q"
    )
    assert resources.prompts("smart") == [expected_join]
    assert output == f"[smart] {expected_join}"
    assert sorted(resources.prompts("fast")) == ["Facts in: q", "Ideas for: q", "Risks in: q"]
    assert_clean(resources.prompts())


# -- prompt composition -------------------------------------------------------------


class Chain(Module):
    """``b`` gets a prompt composed from ``a``'s output by ``compose``."""

    def __init__(self, compose: Callable[[str, str], str]) -> None:
        super().__init__()
        self.a = LLMInference("a")
        self.b = LLMInference("b")
        self.compose = compose

    def forward(self, x: str) -> str:
        return self.b(self.compose(self.a(x), x))


COMPOSITIONS: dict[str, tuple[Callable[[str, str], str], str]] = {
    "f-string": (lambda a, x: f"Analyze:\n{a}", "Analyze:\n[a] q"),
    "plus": (lambda a, x: "Analyze: " + a + " (" + x + ")", "Analyze: [a] q (q)"),
    "join": (lambda a, x: " | ".join(["start", a, x]), "start | [a] q | q"),
    "format positional": (lambda a, x: "A={} X={}".format(a, x), "A=[a] q X=q"),  # noqa: UP032
    "format named": (lambda a, x: "A={a} X={x}".format(a=a, x=x), "A=[a] q X=q"),  # noqa: UP032
    "percent": (lambda a, x: "A=%s X=%s" % (a, x), "A=[a] q X=q"),  # noqa: UP031
    "percent mapping": (lambda a, x: "A=%(a)s" % {"a": a}, "A=[a] q"),  # noqa: UP031
    "repeat": (lambda a, x: a * 2, "[a] q[a] q"),
}


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_composition_records_the_dependency(name: str) -> None:
    compose, _ = COMPOSITIONS[name]
    graph = plait.trace(Chain(compose), "q")

    assert "a" in graph.nodes["b"].dependencies
    assert ("a", "b") in graph.edges()
    [prompt] = graph.nodes["b"].args
    assert isinstance(prompt, Template)
    assert "a" in set(prompt.refs())


@pytest.mark.parametrize("name", list(COMPOSITIONS))
async def test_composition_substitutes_the_real_text(name: str) -> None:
    compose, expected = COMPOSITIONS[name]
    resources = echo_resources()
    output = await Chain(compose).bind(resources)("q")

    assert resources.prompts("a") == ["q"]
    assert resources.prompts("b") == [expected]
    assert output == f"[b] {expected}"
    assert_clean(resources.prompts())


async def test_nested_call_in_f_string_runs_a_first_and_sends_its_text() -> None:
    class Nested(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")
            self.b = LLMInference("b")

        def forward(self, x: str) -> str:
            return self.b(f"Analyze:\n{self.a(x)}")

    module = Nested()
    graph = plait.trace(module, "q")
    assert graph.nodes["b"].dependencies == ["a"]
    assert graph.topological_order().index("a") < graph.topological_order().index("b")

    resources = echo_resources()
    assert await module.bind(resources)("q") == "[b] Analyze:\n[a] q"
    assert [call.alias for call in resources.calls] == ["a", "b"]
    assert resources.prompts("b") == ["Analyze:\n[a] q"]


async def test_traced_text_inside_chat_messages_is_substituted() -> None:
    class Chat(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")
            self.b = LLMInference("b", system_prompt="sys")

        def forward(self, x: str) -> str:
            draft = self.a(x)
            return self.b(
                [
                    {"role": "user", "content": x},
                    {"role": "assistant", "content": draft},
                    {"role": "user", "content": f"Improve: {draft}"},
                ]
            )

    module = Chat()
    assert plait.trace(module, "q").nodes["b"].dependencies == ["input:0", "a"]
    resources = echo_resources()
    assert await module.bind(resources)("q") == "[b] Improve: [a] q"
    [request] = [call.request for call in resources.calls if call.alias == "b"]
    assert request.messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "[a] q"},
        {"role": "user", "content": "Improve: [a] q"},
    ]


def test_composed_output_becomes_a_template_output() -> None:
    class Report(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")

        def forward(self, x: str) -> str:
            return f"Report: {self.a(x)}"

    graph = plait.trace(Report(), "q")
    assert graph.output == Template(("Report: ", NodeRef("a")))
    assert graph.output_ids == ["a"]


async def test_composed_and_structured_outputs_resolve_at_run_time() -> None:
    class Multi(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")
            self.b = LLMInference("b")

        def forward(self, x: str) -> Any:
            first = self.a(x)
            return {"both": [first, self.b(x)], "note": f"<{first}>", "pair": (x, first)}

    output = await Multi().bind(echo_resources())("q")
    assert output == {"both": ["[a] q", "[b] q"], "note": "<[a] q>", "pair": ("q", "[a] q")}


async def test_forward_returning_none_gives_none() -> None:
    class SideEffect(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")

        def forward(self, x: str) -> None:
            self.a(x)

    resources = echo_resources()
    assert await SideEffect().bind(resources)("q") is None
    assert resources.prompts() == ["q"]


async def test_keyword_inputs_become_named_input_nodes() -> None:
    class Pair(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")

        def forward(self, question: str, context: str) -> str:
            return self.a(f"{context} / {question}")

    module = Pair()
    graph = plait.trace(module, question="q", context="c")
    assert graph.input_ids == ["input:question", "input:context"]
    assert set(graph.nodes["a"].dependencies) == {"input:question", "input:context"}
    resources = echo_resources()
    assert await module.bind(resources)(question="Q?", context="C.") == "[a] C. / Q?"


# -- Parameters in prompts ----------------------------------------------------------


class Styled(Module):
    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("be brief", description="style instruction")
        self.llm = LLMInference("a")
        self.forward_calls = 0

    def forward(self, x: str) -> str:
        self.forward_calls += 1
        return self.llm(f"{self.style}: {x}")


def test_parameter_in_f_string_records_a_param_ref() -> None:
    module = Styled()
    graph = plait.trace(module, "q")
    [prompt] = graph.nodes["llm"].args
    assert isinstance(prompt, Template)
    [param_part] = [part for part in prompt.parts if isinstance(part, ParamRef)]
    assert param_part.param is module.style
    assert module.style in graph.nodes["llm"].parameters
    assert graph.parameters == {"style": module.style}


async def test_execution_reads_the_parameter_current_value_without_retracing() -> None:
    resources = echo_resources()
    module = Styled().bind(resources)
    assert await module("q") == "[a] be brief: q"

    module.style.value = "be thorough"
    assert await module("q") == "[a] be thorough: q"
    module.style.apply_update("be funny")
    assert await module("q") == "[a] be funny: q"

    assert module.forward_calls == 1
    assert resources.prompts() == ["be brief: q", "be thorough: q", "be funny: q"]


async def test_unowned_parameter_does_not_collide_with_an_owned_one() -> None:
    outside = Parameter("OUTSIDE", description="not owned by the module")

    class Owner(Module):
        def __init__(self) -> None:
            super().__init__()
            self.param1 = Parameter("OWNED", description="owned")
            self.llm = LLMInference("a")

        def forward(self, x: str) -> str:
            return self.llm(f"{outside} {self.param1} {x}")

    module = Owner()
    graph = plait.trace(module, "q")
    assert set(graph.parameters.values()) == {outside, module.param1}
    assert await module.bind(echo_resources())("q") == "[a] OUTSIDE OWNED q"


def test_parameter_renders_its_value_outside_tracing_and_a_token_inside() -> None:
    param = Parameter("hello", description="greeting")
    assert f"{param}" == "hello"
    with tracing(Tracer()):
        inside = f"{param}"
    assert inside != "hello"
    assert any(char in inside for char in TOKEN_CHARS)


# -- structured outputs -------------------------------------------------------------


class Verdict(BaseModel):
    answer: str
    score: int
    title: str


class Judge(Module):
    def __init__(self) -> None:
        super().__init__()
        self.judge = LLMInference("judge", response_format=Verdict)
        self.explain = LLMInference("explain")

    def forward(self, x: str) -> Any:
        verdict = self.judge(x)
        text = self.explain(f"Explain {verdict['answer']} (score {verdict.score})")
        return {
            "answer": verdict["answer"],
            "score": verdict.score,
            "title": verdict.title,
            "why": text,
        }


def test_structured_access_records_select_nodes() -> None:
    graph = plait.trace(Judge(), "q")
    selects = [node for node in graph.nodes.values() if isinstance(node.module, Select)]
    keys = sorted((node.module.key, node.module.attribute) for node in selects)
    assert keys == [
        ("answer", False),
        ("answer", False),
        ("score", True),
        ("score", True),
        ("title", True),
    ]
    for node in selects:
        assert node.dependencies == ["judge"]
        assert node.args == (NodeRef("judge"),)
    assert set(graph.nodes["explain"].dependencies) == {"select", "select#2"}


async def test_structured_access_selects_the_right_values_at_run_time() -> None:
    resources = echo_resources(structured={"answer": "yes", "score": 7, "title": "T"})
    output = await Judge().bind(resources)("q")

    assert output == {
        "answer": "yes",
        "score": 7,
        "title": "T",
        "why": "[explain] Explain yes (score 7)",
    }
    assert resources.prompts("explain") == ["Explain yes (score 7)"]


async def test_whole_structured_output_embeds_as_json() -> None:
    class Summarise(Module):
        def __init__(self) -> None:
            super().__init__()
            self.judge = LLMInference("judge", response_format=Verdict)
            self.write = LLMInference("write")

        def forward(self, x: str) -> str:
            return self.write(f"Verdict: {self.judge(x)}")

    resources = echo_resources(structured={"answer": "no", "score": 1, "title": "t"})
    await Summarise().bind(resources)("q")
    assert resources.prompts("write") == ['Verdict: {"answer":"no","score":1,"title":"t"}']


# -- operations that need a value refuse ----------------------------------------------


def _slice(out: str) -> Any:
    return out[1:3]


REFUSALS: dict[str, Callable[[str], Any]] = {
    "truth test": lambda out: "yes" if out else "no",
    "len": len,
    "==": lambda out: out == "x",
    "!=": lambda out: out != "x",
    "<": lambda out: out < "x",
    "iteration": lambda out: list(out),
    "for loop": lambda out: [char for char in out],
    "slicing": _slice,
    ".strip()": lambda out: out.strip(),
    ".split()": lambda out: out.split(","),
    "in": lambda out: "x" in out,
    "int()": int,
    "float()": float,
    "% template": lambda out: out % ("a",),
    "format spec": lambda out: f"{out:>20}",
    "repr in f-string": lambda out: f"{out!r}",
    "repr with %r": lambda out: "%r" % (out,),  # noqa: UP031
}


class Refuses(Module):
    def __init__(self, operation: Callable[[str], Any]) -> None:
        super().__init__()
        self.a = LLMInference("a")
        self.b = LLMInference("b")
        self.operation = operation

    def forward(self, x: str) -> Any:
        return self.b(self.operation(self.a(x)))


@pytest.mark.parametrize("name", list(REFUSALS))
def test_data_dependent_operations_raise_a_helpful_tracing_error(name: str) -> None:
    with pytest.raises(TracingError) as caught:
        plait.trace(Refuses(REFUSALS[name]), "q")
    message = str(caught.value)
    assert "traced output" in message
    if "repr" not in name:
        assert "'a'" in message, "the message names the node whose value was needed"
        assert "make forward `async def`" in message
        assert "plait.functional" in message
    else:
        assert "{out}" in message


def test_a_placeholder_changed_by_a_string_function_is_refused() -> None:
    with pytest.raises(TracingError, match="changed by a string function") as caught:
        plait.trace(Refuses(lambda out: f"<{str.upper(out)}>"), "q")
    assert "`async def`" in str(caught.value)


def test_an_escaped_placeholder_is_refused() -> None:
    with pytest.raises(TracingError, match=r"json\.dumps") as caught:
        plait.trace(Refuses(lambda out: json.dumps({"question": out})), "q")
    assert "F.render" in str(caught.value)


def test_joining_the_characters_of_one_output_keeps_the_advice() -> None:
    # TracingError is not a TypeError, so str.join cannot replace its message.
    with pytest.raises(TracingError, match="Iterating"):
        plait.trace(Refuses(lambda out: ",".join(out)), "q")


def test_tracing_error_is_a_plait_error() -> None:
    with pytest.raises(TracingError) as caught:
        plait.trace(Refuses(len), "q")
    assert isinstance(caught.value, PlaitError)


async def test_bound_call_surfaces_the_tracing_error() -> None:
    module = Refuses(lambda out: out == "x").bind(echo_resources())
    with pytest.raises(TracingError, match="=="):
        await module("q")


def test_indexing_with_a_traced_key_is_refused() -> None:
    class Lookup(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")
            self.b = LLMInference("b")

        def forward(self, x: str) -> Any:
            return self.a(x)[self.b(x)]

    with pytest.raises(TracingError, match="Indexing with another traced value"):
        plait.trace(Lookup(), "q")


def test_proxy_is_a_str_whose_repr_names_its_node() -> None:
    seen: list[Any] = []

    class Peek(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")

        def forward(self, x: str) -> str:
            out = self.a(x)
            seen.extend([out, repr(out), hash(out), isinstance(out, str)])
            return out

    plait.trace(Peek(), "q")
    out, text, hashed, is_str = seen
    assert isinstance(out, Proxy)
    assert is_str
    assert text == "<traced output of 'a'>"
    assert isinstance(hashed, int)


# -- leaf vs composite ------------------------------------------------------------


class Tidy(Module):
    """A leaf: no child modules, so its forward runs at execution on real text."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def forward(self, text: str) -> str:
        self.calls.append(text)
        return text.strip().upper()


class Inner(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("inner")

    def forward(self, x: str) -> str:
        return self.llm(f"inner: {x}")


class Outer(Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Inner()
        self.tidy = Tidy()
        self.last = LLMInference("last")

    def forward(self, x: str) -> str:
        return self.last(self.tidy(self.first(x)))


def test_composites_are_traced_through_and_leaves_are_nodes() -> None:
    module = Outer()
    graph = plait.trace(module, "q")

    assert graph.topological_order() == ["input:0", "first.llm", "tidy", "last"]
    assert graph.nodes["first.llm"].module is module.first.llm
    assert graph.nodes["first.llm"].module_path == "first.llm"
    assert graph.nodes["tidy"].module is module.tidy
    assert graph.nodes["tidy"].kind is NodeKind.OP
    assert module.tidy.calls == [], "a leaf's forward does not run while tracing"


async def test_leaf_module_runs_on_real_values_at_execution() -> None:
    module = Outer()
    resources = echo_resources()
    assert await module.bind(resources)("  q  ") == "[last] [INNER] INNER:   Q"
    assert module.tidy.calls == ["[inner] inner:   q  "]


def test_same_leaf_called_twice_gets_two_nodes() -> None:
    class Twice(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")

        def forward(self, x: str) -> str:
            return self.a(self.a(x))

    graph = plait.trace(Twice(), "q")
    assert graph.topological_order() == ["input:0", "a", "a#2"]
    assert graph.nodes["a#2"].dependencies == ["a"]


def test_unregistered_leaf_is_named_after_its_type() -> None:
    helper = LLMInference("a")

    class UsesGlobal(Module):
        def __init__(self) -> None:
            super().__init__()
            self.tidy = Tidy()

        def forward(self, x: str) -> str:
            return self.tidy(helper(x))

    graph = plait.trace(UsesGlobal(), "q")
    assert "llminference" in graph.nodes
    assert graph.nodes["llminference"].module is helper


def test_leaf_module_traced_at_top_level_is_one_node() -> None:
    graph = plait.trace(LLMInference("a"), "q")
    assert list(graph.nodes) == ["input:0", "llminference"]
    assert graph.output_ids == ["llminference"]


def test_async_forward_on_a_composite_traces_as_one_dynamic_node() -> None:
    class AsyncComposite(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")

        async def forward(self, x: str) -> str:  # type: ignore[override]
            return str(self.a(x))

    graph = plait.trace(AsyncComposite(), "q")
    (node,) = [node for node in graph.nodes.values() if node.kind is not NodeKind.INPUT]
    assert node.kind is NodeKind.DYNAMIC
    assert "(dynamic)" in node.label


def test_tracer_context_is_only_set_during_tracing() -> None:
    observed: list[object] = []

    class Observe(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")

        def forward(self, x: str) -> str:
            observed.append(current_tracer())
            return self.a(x)

    assert current_tracer() is None
    plait.trace(Observe(), "q")
    assert isinstance(observed[0], Tracer)
    assert current_tracer() is None


# -- graph caching per call shape ---------------------------------------------------


class Counting(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("a")
        self.forward_calls = 0

    def forward(self, x: str, suffix: str = "") -> str:
        self.forward_calls += 1
        return self.llm(f"{x}{suffix}")


async def test_a_batch_of_1000_inputs_traces_once() -> None:
    module = Counting()
    resources = echo_resources()
    inputs = [f"item {index}" for index in range(1000)]

    outputs = await module.bind(resources)(inputs)

    assert module.forward_calls == 1
    assert outputs == [f"[a] item {index}" for index in range(1000)]
    assert len(resources.calls) == 1000


def test_graphs_are_cached_per_call_shape() -> None:
    module = Counting()
    first = module._plait_graph(("x",), {})
    assert module._plait_graph(("a completely different value",), {}) is first
    assert module.forward_calls == 1

    two_args = module._plait_graph(("x", "y"), {})
    assert two_args is not first
    keyword = module._plait_graph(("x",), {"suffix": "!"})
    assert keyword is not first
    assert keyword is not two_args
    assert module.forward_calls == 3
    assert module._plait_graph(("z",), {"suffix": "?"}) is keyword
    assert module.forward_calls == 3


def test_changing_the_module_structure_retraces() -> None:
    module = Counting()
    before = module._plait_graph(("x",), {})
    module.llm = LLMInference("b")
    after = module._plait_graph(("x",), {})
    assert after is not before
    assert after.nodes["llm"].module.alias == "b"
    assert module.forward_calls == 2
