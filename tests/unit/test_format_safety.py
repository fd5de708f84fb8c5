"""F.format templates are data: plain fields only, and the filled text is bounded.

A template handed to ``F.format`` may be a model's reply or a prompt an
optimizer rewrote, so it must not drive Python's format language (a width of
150 million characters, nested specs, attribute lookups on the arguments).
"""

from __future__ import annotations

import pytest

import plait.functional as F
from plait import LLMInference, Module, Parameter
from plait.errors import TemplateError
from plait.testing import FakeResources
from plait.tracing.ops import MAX_TEMPLATE_OUTPUT
from support.resources import replying


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("{0:>150000000}", r"'\{0:>150000000\}'.*format spec"),
        ("{0:{0:{0:}}}", "format spec"),
        ("{:>9}", "format spec"),
        ("{name:^20}", "format spec"),
        ("{0!r}", "conversion"),
        ("{name!s}", "conversion"),
        ("{0.__class__}", r"'\{0.__class__\}'.*plain"),
        ("{0[0]}", "plain"),
        ("{name.upper}", "plain"),
    ],
)
def test_anything_but_a_plain_field_is_refused(template: str, names: str) -> None:
    with pytest.raises(TemplateError, match=names):
        F.format(template, "x", name="y")


@pytest.mark.parametrize("template", ["{", "}", "a {0", "{0!}", "{} {0}", "{0} {}"])
def test_a_template_python_cannot_parse_is_a_template_error(template: str) -> None:
    with pytest.raises(TemplateError, match="template"):
        F.format(template, "x")


def test_plain_fields_fill_as_str_format_would() -> None:
    assert F.format("{} and {}", "a", "b") == "a and b"
    assert F.format("{1}{0}{1}", "a", "b") == "bab"
    assert F.format("{who} said {0}", "hi", who="Ada") == "Ada said hi"
    assert F.format("{{literal}} {0:} {x}", "v", x=1) == "{literal} v 1"
    assert F.format("no fields") == "no fields"


def test_a_missing_field_is_still_named() -> None:
    with pytest.raises(TemplateError, match="needs 'missing'"):
        F.format("{missing}")
    with pytest.raises(TemplateError, match="needs argument 2"):
        F.format("{2}", "a")
    with pytest.raises(TemplateError, match="needs argument 1"):
        F.format("{}{}", "a")


def test_the_filled_text_is_bounded() -> None:
    big = "x" * (MAX_TEMPLATE_OUTPUT // 10)
    assert len(F.format("{0}" * 10, big)) == MAX_TEMPLATE_OUTPUT
    with pytest.raises(TemplateError, match=f"more than {MAX_TEMPLATE_OUTPUT:,} characters"):
        F.format("{0}" * 1000, big)
    with pytest.raises(TemplateError, match="more than"):
        F.render("{x}" * 1000, x=big)


def test_a_parameter_template_is_held_to_the_same_rule() -> None:
    template = Parameter("Q: {q}", description="question template")
    assert F.format(template, q="why") == "Q: why"
    template.apply_update("Q: {q:>100000000}")
    with pytest.raises(TemplateError, match="format spec"):
        F.format(template, q="why")


def scripted(reply: str) -> FakeResources:
    """Alias ``writer`` answers with ``reply``, which the pipeline uses as a template;
    every other alias echoes ``"[alias] <prompt>"``."""
    return FakeResources(
        replying(lambda alias, prompt: reply if alias == "writer" else f"[{alias}] {prompt}")
    )


class ReplyAsTemplate(Module):
    def __init__(self) -> None:
        super().__init__()
        self.writer = LLMInference("writer")
        self.reader = LLMInference("reader")

    def forward(self, x: str) -> str:
        return self.reader(F.format(self.writer(x), x))


async def test_a_model_reply_used_as_a_template_cannot_blow_up_the_prompt() -> None:
    resources = scripted("{0:>150000000}")
    with pytest.raises(TemplateError, match=r"'\{0:>150000000\}' has a format spec"):
        await ReplyAsTemplate().bind(resources)("q")
    assert resources.prompts("reader") == []


async def test_a_model_reply_with_plain_fields_fills_as_before() -> None:
    resources = scripted("Expand on {0}, briefly")
    assert await ReplyAsTemplate().bind(resources)("q") == "[reader] Expand on q, briefly"
