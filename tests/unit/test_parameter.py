"""Parameter: descriptions, feedback, updates, and how it renders as text."""

from __future__ import annotations

import pytest

import plait
from plait import LLMInference, Module, Parameter
from plait.errors import ConfigError, TracingError
from plait.graph import ParamRef, Template
from support.resources import echo_resources


@pytest.mark.parametrize("description", [None, "", "   "])
def test_learnable_parameter_needs_a_description(description: str | None) -> None:
    with pytest.raises(ConfigError, match="description"):
        Parameter("be brief", description=description)


def test_frozen_parameter_needs_no_description() -> None:
    param = Parameter("fixed", requires_grad=False)
    assert param.value == "fixed"
    assert param.description is None
    assert not param.requires_grad


def test_value_must_be_text() -> None:
    with pytest.raises(ConfigError, match="must be a str"):
        Parameter(3, description="number")  # type: ignore[arg-type]


def test_feedback_accumulates_in_order_and_zeroes() -> None:
    param = Parameter("p", description="d")
    assert param.feedback == ()
    param.accumulate_feedback("too long")
    param.accumulate_feedback("")
    param.accumulate_feedback("too formal")
    assert param.feedback == ("too long", "too formal")
    param.zero_feedback()
    assert param.feedback == ()


def test_feedback_is_read_only() -> None:
    param = Parameter("p", description="d")
    param.accumulate_feedback("x")
    with pytest.raises(AttributeError):
        param.feedback = ("y",)  # type: ignore[misc]
    assert not hasattr(param.feedback, "append")
    assert param.feedback == ("x",)


def test_apply_update_replaces_the_value() -> None:
    param = Parameter("old", description="d")
    param.apply_update("new")
    assert param.value == "new"
    with pytest.raises(ConfigError, match="must be a str"):
        param.apply_update(None)  # type: ignore[arg-type]
    assert param.value == "new"


def test_apply_update_refuses_a_frozen_parameter() -> None:
    param = Parameter("fixed", requires_grad=False)
    with pytest.raises(ConfigError, match="requires_grad=False"):
        param.apply_update("changed")
    assert param.value == "fixed"


def test_renders_as_its_value_outside_tracing() -> None:
    param = Parameter("hello", description="greeting")
    assert str(param) == "hello"
    assert f"<{param}>" == "<hello>"
    assert f"{param:>7}" == "  hello"
    assert "{}!".format(param) == "hello!"  # noqa: UP032
    assert "%s!" % param == "hello!"  # noqa: UP031
    assert param + " world" == "hello world"
    assert "say " + param == "say hello"  # type: ignore[operator]


def test_adding_a_non_string_is_a_type_error() -> None:
    param = Parameter("hello", description="greeting")
    with pytest.raises(TypeError):
        param + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        1 + param  # type: ignore[operator]


def test_repr_shows_a_shortened_value_and_settings() -> None:
    short = Parameter("hi", description="d")
    assert repr(short) == "Parameter('hi', description='d', requires_grad=True)"
    long = Parameter("x" * 100, requires_grad=False)
    assert repr(long) == f"Parameter('{'x' * 57}...', description=None, requires_grad=False)"


# -- inside tracing -------------------------------------------------------------------


class Prompted(Module):
    def __init__(self) -> None:
        super().__init__()
        self.instruction = Parameter("Summarise", description="task instruction")
        self.llm = LLMInference("a")

    def forward(self, text: str) -> str:
        return self.llm("[" + self.instruction + "] " + text)


def test_plus_records_a_param_ref() -> None:
    module = Prompted()
    graph = plait.trace(module, "q")
    [prompt] = graph.nodes["llm"].args
    assert isinstance(prompt, Template)
    params = [part.param for part in prompt.parts if isinstance(part, ParamRef)]
    assert params == [module.instruction]
    assert graph.nodes["llm"].parameters == (module.instruction,)


async def test_plus_uses_the_current_value_at_run_time() -> None:
    resources = echo_resources()
    module = Prompted().bind(resources)
    await module("q")
    module.instruction.apply_update("Translate")
    await module("q")
    assert resources.prompts() == ["[Summarise] q", "[Translate] q"]


def test_parameter_passed_as_an_argument_is_a_param_ref() -> None:
    class Direct(Module):
        def __init__(self) -> None:
            super().__init__()
            self.question = Parameter("What is 2+2?", description="fixed question")
            self.llm = LLMInference("a")

        def forward(self) -> str:
            return self.llm(self.question)

    module = Direct()
    graph = plait.trace(module)
    [arg] = graph.nodes["llm"].args
    assert isinstance(arg, ParamRef)
    assert arg.param is module.question
    assert module.bind(echo_resources()).run_sync() == "[a] What is 2+2?"


def test_format_spec_on_a_parameter_while_tracing_is_refused() -> None:
    class Padded(Module):
        def __init__(self) -> None:
            super().__init__()
            self.label = Parameter("x", description="label")
            self.llm = LLMInference("a")

        def forward(self, text: str) -> str:
            return self.llm(f"{self.label:>10} {text}")

    with pytest.raises(TracingError, match="format spec"):
        plait.trace(Padded(), "q")


def test_reading_value_while_tracing_bakes_the_text_in() -> None:
    """Documented behaviour: ``param.value`` is a plain string, so it is not tracked."""

    class Baked(Module):
        def __init__(self) -> None:
            super().__init__()
            self.label = Parameter("first", description="label")
            self.llm = LLMInference("a")

        def forward(self, text: str) -> str:
            return self.llm(f"{self.label.value} {text}")

    graph = plait.trace(Baked(), "q")
    [prompt] = graph.nodes["llm"].args
    assert prompt.parts[0] == "first "
    assert graph.nodes["llm"].parameters == ()
