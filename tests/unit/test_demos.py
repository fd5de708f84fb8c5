"""Demos: rendered as chat turns before the query, saved and loaded with the state dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference, Module, Parameter
from plait.backward_prompt import HEADER
from plait.demos import Demo, Demos
from plait.errors import ConfigError
from plait.optimization import FeedbackOptimizer, VerifierLoss
from plait.testing import FakeResources
from support.learning import Classifier
from support.resources import replying


def test_pairs_render_as_user_and_assistant_turns_between_system_and_query() -> None:
    demos = Demos("worked examples", examples=[("2+2", "4"), Demo("3+3", "6")])
    llm = LLMInference("fast", system_prompt="Add.", demos=demos)
    assert llm.forward("5+5").messages == [
        {"role": "system", "content": "Add."},
        {"role": "user", "content": "2+2"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "5+5"},
    ]
    conversation = [{"role": "system", "content": "Own."}, {"role": "user", "content": "1+1"}]
    assert [m["content"] for m in llm.forward(conversation).messages] == [
        "Own.",
        "2+2",
        "4",
        "3+3",
        "6",
        "1+1",
    ]
    assert [m["role"] for m in LLMInference("fast", demos=demos).forward("x").messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]


async def test_an_optimizer_swap_changes_the_next_request_without_retracing() -> None:
    resources = FakeResources({"fast": "ok"})
    module = Classifier().bind(resources)
    await module("apple")
    module.demos.set([("Word: oak", "tree")])
    await module("pear")
    first, second = (call.request.messages for call in resources.calls)
    assert len(first) == 2
    assert second[1:3] == [
        {"role": "user", "content": "Word: oak"},
        {"role": "assistant", "content": "tree"},
    ]


def test_state_dict_saves_and_loads_the_pairs(tmp_path: Path) -> None:
    module = Classifier()
    module.demos.set([("Word: oak", "tree"), ("Word: cod", "fish")])
    state = module.state_dict()
    assert json.loads(state["demos"]) == [
        {"input": "Word: oak", "output": "tree"},
        {"input": "Word: cod", "output": "fish"},
    ]
    fresh = Classifier()
    fresh.load_state_dict(state)
    assert fresh.demos.pairs == (Demo("Word: oak", "tree"), Demo("Word: cod", "fish"))
    module.save(tmp_path / "learned.json")
    assert Classifier().load(tmp_path / "learned.json").demos.pairs == fresh.demos.pairs
    assert list(dict(module.named_parameters())) == ["instruction", "demos"]


def test_bad_values_and_sizes_are_refused() -> None:
    demos = Demos("examples", k=2)
    with pytest.raises(ConfigError, match="at most k=2"):
        demos.set([("a", "1"), ("b", "2"), ("c", "3")])
    with pytest.raises(ConfigError, match="JSON"):
        demos.value = "not json"
    with pytest.raises(ConfigError, match="input"):
        demos.value = '[{"question": "a"}]'
    with pytest.raises(ConfigError, match="Demo or an"):
        demos.set(["lonely"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="positive"):
        Demos("examples", k=0)
    with pytest.raises(ConfigError, match="description"):
        Demos("")
    with pytest.raises(ConfigError, match="must be a Demos"):
        LLMInference("fast", demos=[("a", "b")])  # type: ignore[arg-type]
    frozen = Demos("fixed", requires_grad=False)
    with pytest.raises(ConfigError, match="requires_grad=False"):
        frozen.set([("a", "b")])
    assert demos.pairs == ()
    assert "0 of k=2" in repr(demos)


def test_non_text_examples_are_rendered_as_text() -> None:
    demos = Demos("examples", examples=[({"a": 1}, 2)])
    assert demos.pairs == (Demo('{"a": 1}', "2"),)


class Tagged(Module):
    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("Be short.", description="the answer style")
        self.llm = LLMInference(
            "fast", system_prompt=self.style, demos=Demos("examples", examples=[("q", "a")])
        )

    def forward(self, question: str) -> Any:
        return self.llm(question)


async def test_feedback_neither_asks_about_nor_rewrites_demos() -> None:
    def reply(alias: str, prompt: str) -> str:
        if prompt.startswith(HEADER):
            assert "p2" not in prompt  # only the style is asked about
            return '<FEEDBACK item="p1">shorter</FEEDBACK>'
        if alias == "optimizer":
            return "<VALUE>Be very short.</VALUE>"
        return "long answer"

    resources = FakeResources(replying(reply), aliases=("fast", "optimizer"))
    module = Tagged().bind(resources).train()
    demos = module.llm.demos
    output = await module("why?")
    loss = await VerifierLoss(lambda out, target: "too long")(output)
    await loss.backward()
    assert module.style.feedback == ("shorter",)
    assert demos.feedback == ()
    demos.accumulate_feedback("rewrite me")  # even with feedback, the optimizer leaves it
    updates = await FeedbackOptimizer(module.parameters()).bind(resources).step()
    assert [update.parameter for update in updates] == [module.style]
    assert demos.pairs == (Demo("q", "a"),)
