"""Module and LLMInference: registration, state, modes, binding and how calls behave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import plait
from plait import LLMInference, Module, Parameter, ParameterList, Sequential
from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import ConfigError, ResourcesNotBoundError
from support.resources import echo_resources


class Leaf(Module):
    """A module without children: plain Python when called directly."""

    def __init__(self, suffix: str = "!") -> None:
        super().__init__()
        self.prompt = Parameter(f"prompt{suffix}", description="what the leaf says")
        self.suffix = suffix

    def forward(self, text: str) -> str:
        return text + self.suffix


class Branch(Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = Leaf("L")
        self.right = Leaf("R")
        self.bias = Parameter("bias", description="branch bias")

    def forward(self, text: str) -> str:
        return str(self.right(self.left(text)))


class Tree(Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = Branch()
        self.tip = Leaf("T")
        self.root_prompt = Parameter("root", description="root prompt")

    def forward(self, text: str) -> str:
        return str(self.tip(self.branch(text)))


# -- registration -----------------------------------------------------------------


def test_children_are_registered_in_assignment_order() -> None:
    tree = Tree()
    assert list(tree.children()) == [tree.branch, tree.tip]
    assert [name for name, _ in tree.named_children()] == ["branch", "tip"]


def test_named_modules_uses_dotted_names_and_includes_self() -> None:
    tree = Tree()
    named = dict(tree.named_modules())
    assert list(named) == ["", "branch", "branch.left", "branch.right", "tip"]
    assert named["branch.left"] is tree.branch.left
    assert list(tree.modules()) == list(named.values())
    assert [name for name, _ in tree.named_modules(prefix="model")][:2] == [
        "model",
        "model.branch",
    ]


def test_named_parameters_use_dotted_paths() -> None:
    tree = Tree()
    named = dict(tree.named_parameters())
    assert set(named) == {
        "root_prompt",
        "branch.bias",
        "branch.left.prompt",
        "branch.right.prompt",
        "tip.prompt",
    }
    assert named["branch.left.prompt"] is tree.branch.left.prompt
    assert list(tree.parameters()) == list(named.values())
    assert [name for name, _ in tree.named_parameters(recurse=False)] == ["root_prompt"]


def test_shared_module_and_parameter_are_listed_once() -> None:
    shared = Leaf()

    class Twice(Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = shared
            self.second = shared
            self.again = shared.prompt

        def forward(self, text: str) -> str:
            return text

    module = Twice()
    assert [name for name, _ in module.named_modules()] == ["", "first"]
    assert [name for name, _ in module.named_parameters()] == ["again"]


def test_reassignment_replaces_the_registered_child() -> None:
    tree = Tree()
    new_tip = Leaf("N")
    tree.tip = new_tip
    assert dict(tree.named_children())["tip"] is new_tip
    assert dict(tree.named_parameters())["tip.prompt"] is new_tip.prompt


def test_assigning_a_plain_value_unregisters_the_name() -> None:
    tree = Tree()
    tree.tip = "not a module"  # type: ignore[assignment]
    tree.root_prompt = "plain text"  # type: ignore[assignment]
    assert "tip" not in dict(tree.named_children())
    assert "root_prompt" not in dict(tree.named_parameters())
    assert tree.tip == "not a module"


def test_switching_between_module_and_parameter_moves_the_registration() -> None:
    tree = Tree()
    param = Parameter("now a parameter", description="swap")
    tree.tip = param  # type: ignore[assignment]
    assert "tip" not in dict(tree.named_children())
    assert dict(tree.named_parameters(recurse=False))["tip"] is param


def test_delattr_unregisters() -> None:
    tree = Tree()
    del tree.tip
    del tree.root_prompt
    assert "tip" not in dict(tree.named_children())
    assert "root_prompt" not in dict(tree.named_parameters())
    assert not hasattr(tree, "tip")


def test_missing_super_init_is_a_clear_error() -> None:
    class Forgetful(Module):
        def __init__(self) -> None:
            self.llm = LLMInference("a")

    with pytest.raises(AttributeError, match=r"super\(\)\.__init__\(\)"):
        Forgetful()


def test_register_module_and_parameter_check_types() -> None:
    module = Leaf()
    module.register_module("with space", Leaf())
    module.register_parameter("odd-name", Parameter("x", requires_grad=False))
    assert "with space" in dict(module.named_children())
    assert "odd-name" in dict(module.named_parameters())
    with pytest.raises(TypeError, match="needs a Module"):
        module.register_module("bad", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a Parameter"):
        module.register_parameter("bad", "text")  # type: ignore[arg-type]


def test_repr_shows_the_tree() -> None:
    text = repr(Tree())
    assert text.startswith("Tree(")
    assert "(branch): Branch(" in text
    assert "(left): Leaf(" in text
    assert "(root_prompt): Parameter('root'" in text
    assert "alias='fast'" in repr(LLMInference("fast"))


# -- state ------------------------------------------------------------------------


def test_state_dict_maps_dotted_names_to_values() -> None:
    tree = Tree()
    state = tree.state_dict()
    assert state["branch.left.prompt"] == "promptL"
    assert state["root_prompt"] == "root"
    assert json.loads(json.dumps(state)) == state


def test_load_state_dict_sets_values() -> None:
    tree = Tree()
    state = {name: value.upper() for name, value in tree.state_dict().items()}
    tree.load_state_dict(state)
    assert tree.branch.left.prompt.value == "PROMPTL"
    assert tree.state_dict() == state


def test_strict_load_rejects_unknown_keys_and_changes_nothing() -> None:
    tree = Tree()
    before = tree.state_dict()
    state = {**{name: "new" for name in before}, "nope.prompt": "x"}
    with pytest.raises(ConfigError, match=r"unexpected keys \['nope.prompt'\]"):
        tree.load_state_dict(state)
    assert tree.state_dict() == before


def test_strict_load_rejects_missing_keys_and_changes_nothing() -> None:
    tree = Tree()
    before = tree.state_dict()
    with pytest.raises(ConfigError, match=r"missing keys \[.*'tip.prompt'.*\]") as caught:
        tree.load_state_dict({"root_prompt": "new"})
    assert "strict=False" in str(caught.value)
    assert tree.state_dict() == before


def test_non_strict_load_applies_matching_keys_only() -> None:
    tree = Tree()
    tree.load_state_dict({"root_prompt": "new root", "unknown": "ignored"}, strict=False)
    assert tree.root_prompt.value == "new root"
    assert tree.tip.prompt.value == "promptT"


def test_load_state_dict_rejects_non_text_values() -> None:
    tree = Tree()
    with pytest.raises(ConfigError, match="root_prompt"):
        tree.load_state_dict({"root_prompt": 3}, strict=False)  # type: ignore[dict-item]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    source = Tree()
    source.tip.prompt.value = "tuned ✓ prompt"
    source.save(path)
    assert json.loads(path.read_text()) == source.state_dict()

    target = Tree()
    assert target.load(path) is target
    assert target.state_dict() == source.state_dict()


def test_load_reports_unreadable_files(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        Tree().load(bad_json)
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        Tree().load(not_object)
    with pytest.raises(ConfigError, match=r"missing\.json"):
        Tree().load(tmp_path / "missing.json")


def test_train_and_eval_are_recursive() -> None:
    tree = Tree()
    assert not any(module.training for module in tree.modules())
    assert tree.train() is tree
    assert all(module.training for module in tree.modules())
    assert tree.eval() is tree
    assert not any(module.training for module in tree.modules())
    tree.branch.train()
    assert tree.branch.left.training
    assert not tree.training


# -- binding and calling ----------------------------------------------------------


def test_bind_returns_the_module_and_rejects_unknown_settings() -> None:
    module = LLMInference("a")
    assert module.bind(echo_resources(), max_concurrent=4) is module
    with pytest.raises(ConfigError, match="max_concurency"):
        module.bind(echo_resources(), max_concurency=4)


def test_bind_rejects_bad_values_and_bad_resources() -> None:
    module = LLMInference("a")
    with pytest.raises(ConfigError, match="max_concurrent"):
        module.bind(echo_resources(), max_concurrent=0)
    with pytest.raises(ConfigError, match="resources must be"):
        module.bind(42)


async def test_unbound_llm_inference_raises_resources_not_bound() -> None:
    with pytest.raises(ResourcesNotBoundError, match=r"bind\(resources=") as caught:
        await LLMInference("a")("hello")
    assert "'a'" in str(caught.value)


async def test_unbound_composite_with_llm_children_raises_resources_not_bound() -> None:
    class Wrapper(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("a")

        def forward(self, text: str) -> str:
            return str(self.llm(text))

    with pytest.raises(ResourcesNotBoundError, match="bind"):
        await Wrapper()("hello")


def test_unbound_run_sync_raises_resources_not_bound() -> None:
    with pytest.raises(ResourcesNotBoundError, match="bind"):
        LLMInference("a").run_sync("hello")


def test_non_llm_module_called_directly_just_runs_forward() -> None:
    assert Leaf("?")("hi") == "hi?"
    assert Tree()("x") == "xLRT"


async def test_bound_call_returns_an_awaitable_that_runs_the_graph() -> None:
    resources = echo_resources()
    llm = LLMInference("a", system_prompt="sys").bind(resources)
    assert await llm("hello") == "[a] hello"
    assert [call.system for call in resources.calls] == ["sys"]


async def test_bound_list_is_a_batch_in_input_order() -> None:
    resources = echo_resources()
    llm = LLMInference("a").bind(resources)
    assert await llm(["x", "y", "z"]) == ["[a] x", "[a] y", "[a] z"]


def test_run_sync_without_a_loop() -> None:
    assert LLMInference("a").bind(echo_resources()).run_sync("hi") == "[a] hi"


async def test_run_sync_inside_a_running_loop() -> None:
    assert LLMInference("a").bind(echo_resources()).run_sync("hi") == "[a] hi"


async def test_system_prompt_parameter_is_read_at_run_time() -> None:
    resources = echo_resources()
    system = Parameter("old system", description="system prompt")
    llm = LLMInference("a", system_prompt=system).bind(resources)
    await llm("x")
    system.apply_update("new system")
    await llm("x")
    assert [call.system for call in resources.calls] == ["old system", "new system"]
    assert dict(llm.named_parameters()) == {"system_prompt": system}


# -- LLMInference -----------------------------------------------------------------


class Answer(BaseModel):
    text: str


def test_llm_forward_builds_a_chat_request_without_network() -> None:
    llm = LLMInference(
        "a",
        system_prompt="be terse",
        temperature=0.2,
        max_tokens=50,
        response_format=Answer,
        seed=7,
    )
    request = llm.forward("question")
    assert isinstance(request, ChatRequest)
    assert request.messages == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "question"},
    ]
    assert request.temperature == 0.2
    assert request.max_tokens == 50
    assert request.response_format is Answer
    assert request.options == {"seed": 7}


def test_llm_forward_accepts_chat_messages() -> None:
    llm = LLMInference("a", system_prompt="sys")
    messages = [{"role": "user", "content": "hi"}]
    request = llm.forward(messages)
    assert request.messages == [{"role": "system", "content": "sys"}, *messages]
    assert messages == [{"role": "user", "content": "hi"}], "the caller's list is not mutated"
    own_system = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    assert llm.forward(own_system).messages == own_system


def test_llm_forward_renders_structured_prompts_as_json() -> None:
    request = LLMInference("a").forward({"k": [1, 2]})
    assert request.messages == [{"role": "user", "content": '{"k": [1, 2]}'}]


def test_llm_parse_response() -> None:
    plain = LLMInference("a")
    assert plain.parse_response(ChatResponse(content="hi", model="m")) == "hi"
    structured = LLMInference("a", response_format=Answer)
    parsed = Answer(text="ok")
    reply = ChatResponse(content='{"text": "ok"}', model="m", parsed=parsed)
    assert structured.parse_response(reply) is parsed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alias": ""}, "alias"),
        ({"alias": 3}, "alias"),
        ({"alias": "a", "system_prompt": 3}, "system_prompt"),
        ({"alias": "a", "response_format": dict}, "response_format"),
        ({"alias": "a", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_llm_inference_rejects_bad_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LLMInference(**kwargs)


def test_llm_inference_is_always_a_leaf() -> None:
    llm = LLMInference("a", system_prompt=Parameter("s", description="system"))
    llm.register_module("extra", Leaf())
    assert llm._plait_is_leaf()


async def test_building_a_container_inside_forward_still_traces_once() -> None:
    # A throwaway Sequential built in forward bumps the global structure version
    # while tracing; the cache must still find the graph for the next inputs.
    class Adhoc(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = LLMInference("a")
            self.b = LLMInference("b")
            self.forward_calls = 0

        def forward(self, text: str) -> str:
            self.forward_calls += 1
            return str(Sequential(self.a, self.b)(text))

    module = Adhoc().bind(echo_resources())
    assert await module(["x", "y", "z"]) == ["[b] [a] x", "[b] [a] y", "[b] [a] z"]
    assert module.forward_calls == 1


def test_parameter_containers_do_not_make_a_module_composite() -> None:
    class Styled(Module):
        def __init__(self) -> None:
            super().__init__()
            self.styles = ParameterList([Parameter("a", requires_grad=False)])

        def forward(self, text: str) -> str:
            return text.upper() if text else "empty"

    class Outer(Module):
        def __init__(self) -> None:
            super().__init__()
            self.styled = Styled()
            self.llm = LLMInference("fast")

        def forward(self, text: str) -> Any:
            return self.llm(self.styled(text))

    assert Styled()._plait_is_leaf()
    graph = plait.trace(Outer(), "x")
    assert [node.module_path for node in graph.nodes.values()][1:] == ["styled", "llm"]
