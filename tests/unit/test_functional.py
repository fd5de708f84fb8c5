"""plait.functional: each op run directly and recorded inside a traced forward."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import plait
import plait.functional as F
from plait import LLMInference, Module, Parameter, Value, ValueKind
from plait.errors import ExecutionError
from plait.graph import NodeRef, ParamRef, Template
from plait.tracing.ops import Concat, Format, ParseStructured, Render, Select
from support.resources import echo_resources


class Person(BaseModel):
    name: str
    age: int


# -- outside tracing: ops run at once ----------------------------------------------


def test_select_directly() -> None:
    assert F.select({"a": 1}, "a") == 1
    assert F.select(["x", "y"], 1) == "y"
    assert F.select(Person(name="Ada", age=36), "name") == "Ada"
    assert F.select(Value(ValueKind.STRUCTURED, {"k": "v"}), "k") == "v"


def test_select_of_a_missing_key_names_it() -> None:
    with pytest.raises(ExecutionError, match="cannot select 'b' from a dict"):
        F.select({"a": 1}, "b")
    with pytest.raises(ExecutionError, match="cannot select 'height' from a Person"):
        F.select(Person(name="Ada", age=36), "height")


def test_concat_directly() -> None:
    assert F.concat("a", "b", "c") == "abc"
    assert F.concat("a", 2, {"k": 1}, sep=" | ") == 'a | 2 | {"k": 1}'
    assert F.concat(Value(ValueKind.TEXT, "v"), Person(name="A", age=1), sep=";") == (
        'v;{"name":"A","age":1}'
    )


def test_format_directly() -> None:
    assert F.format("{} and {other}", "one", other=2) == "one and 2"
    with pytest.raises(ExecutionError, match="needs 'missing'"):
        F.format("{missing}")


def test_render_directly_leaves_other_braces_alone() -> None:
    template = 'Answer {question} as JSON like {"answer": "..."}'
    assert F.render(template, question="why?") == 'Answer why? as JSON like {"answer": "..."}'
    assert F.render("{x}{x}", x=Person(name="A", age=1)) == '{"name":"A","age":1}' * 2
    with pytest.raises(ExecutionError, match=r"needs values for \['question'\]"):
        F.render(template)


def test_render_and_format_take_a_parameter_template() -> None:
    template = Parameter("Q: {q}", description="question template")
    assert F.render(template, q="why") == "Q: why"
    assert F.format(template, q="why") == "Q: why"
    template.apply_update("Question -> {q}")
    assert F.render(template, q="why") == "Question -> why"


def test_parse_structured_directly() -> None:
    parsed = F.parse_structured('{"name": "Ada", "age": 36}', Person)
    assert parsed == Value(ValueKind.STRUCTURED, Person(name="Ada", age=36))
    untyped = F.parse_structured('[1, {"a": 2}]')
    assert untyped == Value(ValueKind.STRUCTURED, [1, {"a": 2}])
    fenced = F.parse_structured('```json\n{"name": "Ada", "age": 36}\n```', Person)
    assert fenced.payload == Person(name="Ada", age=36)


def test_parse_structured_bad_json_is_an_error_value_naming_the_problem() -> None:
    result = F.parse_structured('{"name": "Ada",', Person)
    assert isinstance(result, Value)
    assert result.kind is ValueKind.ERROR
    assert result.is_error
    assert "not valid JSON" in str(result.payload)
    assert "line 1" in str(result.payload)
    assert result.meta["text"] == '{"name": "Ada",'


def test_parse_structured_validation_failure_names_the_field() -> None:
    result = F.parse_structured('{"name": "Ada", "age": "old"}', Person)
    assert result.is_error
    message = str(result.payload)
    assert "does not validate as Person" in message
    assert "age" in message
    missing = F.parse_structured('{"name": "Ada"}', Person)
    assert "age" in str(missing.payload)
    assert "Field required" in str(missing.payload)


# -- inside a traced forward: ops are nodes -------------------------------------------


class Pipeline(Module):
    """Uses every op on traced values."""

    def __init__(self) -> None:
        super().__init__()
        self.writer = LLMInference("writer")
        self.critic = LLMInference("critic")
        self.template = Parameter("Critique {draft} for {goal}", description="critic prompt")

    def forward(self, goal: str) -> dict[str, Any]:
        draft = self.writer(F.format("Write about {}", goal))
        both = F.concat(draft, goal, sep=" / ")
        review = self.critic(F.render(self.template, draft=draft, goal=goal))
        return {"both": both, "review": review, "first": F.select(draft, 0)}


def test_ops_record_nodes_with_dependencies() -> None:
    module = Pipeline()
    graph = plait.trace(module, "cats")

    assert isinstance(graph.nodes["format"].module, Format)
    assert graph.nodes["format"].args == ("Write about {}", NodeRef("input:0"))
    assert graph.nodes["writer"].dependencies == ["format"]
    assert isinstance(graph.nodes["concat"].module, Concat)
    assert graph.nodes["concat"].dependencies == ["writer", "input:0"]
    render = graph.nodes["render"]
    assert isinstance(render.module, Render)
    [template] = render.args
    assert isinstance(template, ParamRef)
    assert template.param is module.template
    assert render.parameters == (module.template,)
    assert render.kwargs == {"draft": NodeRef("writer"), "goal": NodeRef("input:0")}
    assert graph.nodes["critic"].dependencies == ["render"]
    assert isinstance(graph.nodes["select"].module, Select)
    assert graph.nodes["select"].dependencies == ["writer"]


async def test_ops_run_at_execution_on_real_values() -> None:
    module = Pipeline()
    resources = echo_resources()
    output = await module.bind(resources)("cats")

    assert resources.prompts("writer") == ["Write about cats"]
    assert output["both"] == "[writer] Write about cats / cats"
    expected_review = "Critique [writer] Write about cats for cats"
    assert resources.prompts("critic") == [expected_review]
    assert output["review"] == f"[critic] {expected_review}"
    assert output["first"] == "["


async def test_render_template_parameter_is_read_at_run_time() -> None:
    module = Pipeline()
    resources = echo_resources()
    module.bind(resources)
    await module("cats")
    module.template.apply_update("Be harsh on {draft} ({goal})")
    await module("cats")
    assert resources.prompts("critic") == [
        "Critique [writer] Write about cats for cats",
        "Be harsh on [writer] Write about cats (cats)",
    ]


async def test_composed_template_is_resolved_before_the_op_runs() -> None:
    class Composed(Module):
        def __init__(self) -> None:
            super().__init__()
            self.style = Parameter("tersely", description="style")
            self.llm = LLMInference("a")

        def forward(self, text: str) -> str:
            return self.llm(F.render(f"Answer {self.style}: {{question}}", question=text))

    module = Composed()
    graph = plait.trace(module, "q")
    [template] = graph.nodes["render"].args
    assert isinstance(template, Template)
    resources = echo_resources()
    assert await module.bind(resources)("why?") == "[a] Answer tersely: why?"


class Extract(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("a")

    def forward(self, text: str) -> Any:
        return F.parse_structured(self.llm(text), Person)


def test_parse_structured_is_a_node() -> None:
    graph = plait.trace(Extract(), "q")
    node = graph.nodes["parse_structured"]
    assert isinstance(node.module, ParseStructured)
    assert node.module.model is Person
    assert node.dependencies == ["llm"]
    assert graph.output_ids == ["parse_structured"]


async def test_parse_structured_at_execution_gives_an_error_value_on_bad_json() -> None:
    # The echo reply "[a] ..." is not JSON, so the op reports why instead of raising.
    result = await Extract().bind(echo_resources())('{"name": "Ada", "age": 36}')
    assert isinstance(result, Value)
    assert result.is_error
    assert "not valid JSON" in str(result.payload)


async def test_parse_structured_at_execution_parses_a_structured_reply() -> None:
    class Echoed(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("a", response_format=Person)

        def forward(self, text: str) -> Any:
            return F.parse_structured(F.concat(self.llm(text)), Person)

    resources = echo_resources(structured={"name": "Ada", "age": 36})
    result = await Echoed().bind(resources)("who?")
    assert result == Value(ValueKind.STRUCTURED, Person(name="Ada", age=36))


async def test_select_node_fails_the_input_with_a_named_key() -> None:
    class Missing(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("a", response_format=Person)

        def forward(self, text: str) -> Any:
            return self.llm(text)["height"]

    resources = echo_resources(structured={"name": "Ada", "age": 36})
    with pytest.raises(ExecutionError, match="cannot select 'height' from a Person"):
        await Missing().bind(resources)("who?")
