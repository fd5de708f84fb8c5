"""Backward through a dynamic forward: the tape of the calls it made, over real HTTP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from plait import LLMInference, Module, Parameter
from plait.graph import NodeKind
from plait.optimization import VerifierLoss
from plait.resources import ResourceManager
from support.refine import Refine, feedback_reply, never_good, refine_resources


def naming_the_judged(prompt: str, item: str) -> str:
    """Feedback on ``item`` that names the request whose reply was judged."""
    judged = re.findall(r"^\[user\] (.*)$", prompt, re.MULTILINE)[0]
    return f"{item} of [{judged}]"


@pytest.fixture
async def resources() -> AsyncIterator[ResourceManager]:
    async with refine_resources(feedback_reply(naming_the_judged)) as manager:
        yield manager


async def test_feedback_reaches_a_parameter_used_inside_a_loop_once_per_round(
    resources: ResourceManager,
) -> None:
    module = Refine().bind(resources=resources).train()
    output = await module("Task tea")
    record = output.record
    assert record is not None
    (tape,) = record.subrecords.values()
    calls = [node for node in tape.graph.nodes.values() if node.kind is not NodeKind.INPUT]
    assert [node.id for node in calls] == [
        "write#0",
        "judge#1",
        "write#2",
        "judge#3",
        "write#4",
        "judge#5",
    ]
    # each fix was built from the previous draft and the verdict on it
    assert set(tape.graph.nodes["write#4"].dependencies) == {"write#2", "judge#3"}
    assert tape.graph.output_ids == ["write#4"]

    loss = await VerifierLoss(never_good)(output)
    await loss.backward()
    # three rounds of writing, each with its own feedback on the shared prompt
    assert len(module.style.feedback) == 3
    assert all(text.startswith("p1 of [") for text in module.style.feedback)
    assert any("Task tea" in text for text in module.style.feedback)
    assert module.judge.system_prompt == ""
    assert record.released


class Planned(Module):
    """Traced: a planner with a learnable prompt, then the dynamic ``Refine``."""

    def __init__(self) -> None:
        super().__init__()
        self.plan_style = Parameter("Plan briefly.", description="how plans are written")
        self.planner = LLMInference("fast", system_prompt=self.plan_style)
        self.refine = Refine()

    def forward(self, topic: str) -> Any:
        return self.refine(self.planner(f"Plan {topic}"))


async def test_feedback_leaves_a_dynamic_node_for_the_traced_nodes_upstream(
    resources: ResourceManager,
) -> None:
    module = Planned().bind(resources=resources).train()
    output = await module("tea")
    loss = await VerifierLoss(never_good)(output)
    await loss.backward()
    assert len(module.refine.style.feedback) == 3
    # the first draft was written from the plan, so the planner hears about it
    assert module.plan_style.feedback == ("p1 of [Plan tea]",)
