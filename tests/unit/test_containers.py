"""Containers: Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict."""

from __future__ import annotations

from collections import OrderedDict

import pytest

import plait
from plait import (
    LLMInference,
    Module,
    ModuleDict,
    ModuleList,
    Parameter,
    ParameterDict,
    ParameterList,
    Sequential,
)
from support.resources import echo_resources


class Suffix(Module):
    """A leaf that appends text and owns one prompt Parameter."""

    def __init__(self, suffix: str) -> None:
        super().__init__()
        self.suffix = suffix
        self.prompt = Parameter(f"prompt {suffix}", description="step prompt")

    def forward(self, text: str) -> str:
        return text + self.suffix


# -- Sequential -------------------------------------------------------------------


def test_sequential_chains_outputs_when_called_directly() -> None:
    chain = Sequential(Suffix("a"), Suffix("b"), Suffix("c"))
    assert chain("x") == "xabc"


def test_sequential_indexing_iteration_and_length() -> None:
    steps = [Suffix("a"), Suffix("b")]
    chain = Sequential(*steps)
    assert len(chain) == 2
    assert list(chain) == steps
    assert chain[0] is steps[0]
    assert chain[-1] is steps[1]
    with pytest.raises(IndexError, match="out of range"):
        chain[2]


def test_sequential_registers_children_by_index_or_name() -> None:
    chain = Sequential(Suffix("a"), Suffix("b"))
    assert [name for name, _ in chain.named_parameters()] == ["0.prompt", "1.prompt"]
    named = Sequential(OrderedDict([("draft", Suffix("a")), ("polish", Suffix("b"))]))
    assert [name for name, _ in named.named_children()] == ["draft", "polish"]
    assert named("x") == "xab"


def test_sequential_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="Sequential holds Modules, got str"):
        Sequential(Suffix("a"), "not a module")  # type: ignore[arg-type]


def test_sequential_of_llm_calls_traces_into_a_chain() -> None:
    chain = Sequential(LLMInference("a"), LLMInference("b"), LLMInference("c"))
    graph = plait.trace(chain, "q")
    assert graph.topological_order() == ["input:0", "0", "1", "2"]
    assert graph.edges() == [("input:0", "0"), ("0", "1"), ("1", "2")]


async def test_sequential_of_llm_calls_runs_in_order() -> None:
    resources = echo_resources()
    chain = Sequential(LLMInference("a"), LLMInference("b")).bind(resources)
    assert await chain("q") == "[b] [a] q"
    assert resources.prompts() == ["q", "[a] q"]


# -- ModuleList -------------------------------------------------------------------


class Layers(Module):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.layers = ModuleList(Suffix(str(index)) for index in range(count))

    def forward(self, text: str) -> str:
        for layer in self.layers:
            text = layer(text)
        return text


def test_module_list_dotted_registration_names() -> None:
    model = Layers(3)
    assert [name for name, _ in model.named_parameters()] == [
        "layers.0.prompt",
        "layers.1.prompt",
        "layers.2.prompt",
    ]
    assert "layers.1" in dict(model.named_modules())
    assert model.state_dict()["layers.2.prompt"] == "prompt 2"


def test_module_list_indexing_iteration_and_length() -> None:
    items = [Suffix("a"), Suffix("b"), Suffix("c")]
    layers = ModuleList(items)
    assert len(layers) == 3
    assert list(layers) == items
    assert layers[1] is items[1]
    assert layers[-1] is items[2]
    assert list(layers[1:]) == items[1:]
    assert isinstance(layers[1:], ModuleList)
    with pytest.raises(IndexError):
        layers[3]


def test_module_list_mutation_keeps_names_contiguous() -> None:
    a, b, c, d = Suffix("a"), Suffix("b"), Suffix("c"), Suffix("d")
    layers = ModuleList([a, b])
    layers.append(c).extend([d])
    assert list(layers) == [a, b, c, d]
    layers.insert(0, d)
    assert [name for name, _ in layers.named_children()] == ["0", "1", "2", "3", "4"]
    del layers[0]
    assert list(layers) == [a, b, c, d]
    replacement = Suffix("z")
    layers[1] = replacement
    assert dict(layers.named_children())["1"] is replacement
    assert [name for name, _ in layers.named_children()] == ["0", "1", "2", "3"]


def test_module_list_rejects_non_modules() -> None:
    layers = ModuleList()
    with pytest.raises(TypeError, match="ModuleList holds Modules, got int"):
        layers.append(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ModuleList holds Modules"):
        ModuleList([Suffix("a"), Parameter("p", description="d")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="ModuleList holds Modules"):
        layers.insert(0, "x")  # type: ignore[arg-type]


def test_module_list_in_a_traced_forward() -> None:
    class Stack(Module):
        def __init__(self) -> None:
            super().__init__()
            self.steps = ModuleList([LLMInference("a"), LLMInference("b")])

        def forward(self, text: str) -> str:
            for step in self.steps:
                text = step(text)
            return text

    graph = plait.trace(Stack(), "q")
    assert graph.topological_order() == ["input:0", "steps.0", "steps.1"]
    assert graph.nodes["steps.1"].dependencies == ["steps.0"]


def test_non_llm_module_list_loop_runs_directly() -> None:
    assert Layers(3)("x") == "x012"


# -- ModuleDict -------------------------------------------------------------------


def test_module_dict_mapping_behaviour() -> None:
    a, b = Suffix("a"), Suffix("b")
    modules = ModuleDict({"first": a})
    modules["second"] = b
    assert len(modules) == 2
    assert modules["first"] is a
    assert "second" in modules
    assert list(modules) == ["first", "second"]
    assert modules.keys() == ["first", "second"]
    assert modules.values() == [a, b]
    assert modules.items() == [("first", a), ("second", b)]
    del modules["first"]
    assert list(modules) == ["second"]
    assert "first" not in modules


def test_module_dict_registration_names_and_type_errors() -> None:
    class Router(Module):
        def __init__(self) -> None:
            super().__init__()
            self.routes = ModuleDict({"math": Suffix("m"), "code": Suffix("c")})

        def forward(self, text: str) -> str:
            return text

    assert [name for name, _ in Router().named_parameters()] == [
        "routes.math.prompt",
        "routes.code.prompt",
    ]
    modules = ModuleDict()
    with pytest.raises(TypeError, match="keys must be str"):
        modules[1] = Suffix("a")  # type: ignore[index]
    with pytest.raises(TypeError, match="ModuleDict holds Modules, got str"):
        modules["x"] = "text"  # type: ignore[assignment]


def test_module_dict_in_a_traced_forward() -> None:
    class Both(Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = ModuleDict({"pro": LLMInference("a"), "con": LLMInference("b")})

        def forward(self, text: str) -> str:
            return f"{self.experts['pro'](text)} vs {self.experts['con'](text)}"

    graph = plait.trace(Both(), "q")
    assert set(graph.nodes) == {"input:0", "experts.pro", "experts.con"}
    assert Both().bind(echo_resources()).run_sync("q") == "[a] q vs [b] q"


# -- ParameterList / ParameterDict --------------------------------------------------


def test_parameter_list_indexing_iteration_and_names() -> None:
    first = Parameter("one", description="d")
    second = Parameter("two", description="d")
    params = ParameterList([first])
    assert params.append(second) is params
    assert len(params) == 2
    assert params[0] is first
    assert params[-1] is second
    assert list(params) == [first, second]
    with pytest.raises(IndexError):
        params[2]
    third = Parameter("three", description="d")
    params[1] = third
    assert list(params) == [first, third]

    class Holder(Module):
        def __init__(self) -> None:
            super().__init__()
            self.examples = params

        def forward(self, text: str) -> str:
            return text

    assert Holder().state_dict() == {"examples.0": "one", "examples.1": "three"}


def test_parameter_list_rejects_wrong_types() -> None:
    with pytest.raises(TypeError, match="ParameterList holds Parameters, got str"):
        ParameterList(["text"])  # type: ignore[list-item]
    params = ParameterList([Parameter("p", description="d")])
    with pytest.raises(TypeError, match="ParameterList holds Parameters"):
        params[0] = Suffix("a")  # type: ignore[assignment]


def test_parameter_dict_mapping_behaviour_and_names() -> None:
    tone = Parameter("calm", description="tone")
    params = ParameterDict({"tone": tone})
    params["length"] = Parameter("short", description="length")
    assert len(params) == 2
    assert params["tone"] is tone
    assert "length" in params
    assert list(params) == ["tone", "length"]
    assert params.keys() == ["tone", "length"]
    assert [param.value for param in params.values()] == ["calm", "short"]
    assert [key for key, _ in params.items()] == ["tone", "length"]
    assert dict(params.named_parameters()) == dict(params.items())
    del params["tone"]
    assert list(params) == ["length"]
    with pytest.raises(TypeError, match="keys must be str"):
        params[0] = tone  # type: ignore[index]
    with pytest.raises(TypeError, match="ParameterDict holds Parameters, got str"):
        params["x"] = "text"  # type: ignore[assignment]


async def test_parameters_from_a_parameter_dict_in_prompts_are_read_at_run_time() -> None:
    class Styled(Module):
        def __init__(self) -> None:
            super().__init__()
            self.style = ParameterDict({"tone": Parameter("calm", description="tone")})
            self.llm = LLMInference("a")

        def forward(self, text: str) -> str:
            return self.llm(f"({self.style['tone']}) {text}")

    module = Styled()
    graph = plait.trace(module, "q")
    assert graph.parameters == {"style.tone": module.style["tone"]}
    resources = echo_resources()
    module.bind(resources)
    await module("q")
    module.style["tone"].apply_update("angry")
    await module("q")
    assert resources.prompts() == ["(calm) q", "(angry) q"]


async def test_slicing_a_module_list_in_forward_still_traces_once() -> None:
    class Tail(Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = ModuleList([LLMInference("a"), LLMInference("b"), LLMInference("c")])
            self.forward_calls = 0

        def forward(self, text: str) -> str:
            self.forward_calls += 1
            for layer in self.layers[1:]:
                text = layer(text)
            return text

    module = Tail().bind(echo_resources())
    assert await module(["x", "y", "z"]) == ["[c] [b] x", "[c] [b] y", "[c] [b] z"]
    assert module.forward_calls == 1
