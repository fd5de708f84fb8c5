"""A dynamic module's own ``backward`` decides where feedback on it goes, over real HTTP.

Without one, feedback walks the tape of the calls the forward made; with
one, it is called like any module's backward, and may still walk the tape
through ``ctx.walk_inside``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from plait import Module
from plait.errors import BackwardError
from plait.feedback import BackwardContext, BackwardResult
from plait.optimization import VerifierLoss
from plait.resources import ResourceManager
from support.refine import Refine, feedback_reply, never_good, refine_resources


def critique_quoted(prompt: str, item: str) -> str:
    """Feedback on ``item`` that quotes the critique the backward prompt carried."""
    critique = prompt.split("<CRITIQUE>\n", 1)[1].split("\n</CRITIQUE>", 1)[0]
    return f"{item}: {critique}"


@pytest.fixture
async def resources() -> AsyncIterator[ResourceManager]:
    async with refine_resources(feedback_reply(critique_quoted)) as manager:
        yield manager


class Source(Module):
    """A plain step upstream that keeps the feedback it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[str] = []

    def forward(self, text: str) -> str:
        return f"Task {text}"

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        self.heard.append(feedback)
        return BackwardResult()


class Watched(Refine):
    """Keeps what its own backward was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int]] = []


class Routed(Watched):
    """Blames its input only: the tape is not walked, so ``style`` hears nothing."""

    async def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        assert ctx.record is not None
        self.seen.append((feedback, len(ctx.record.node_outputs)))
        return BackwardResult(inputs={0: f"the task was unclear ({feedback})"})


class Focused(Watched):
    """Rewrites the feedback, then walks the tape with it."""

    async def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        self.seen.append((feedback, 0))
        return await ctx.walk_inside(f"focus on tone: {feedback}")


class Pipeline(Module):
    """Traced: the plain step, then the dynamic one."""

    def __init__(self, refine: Refine) -> None:
        super().__init__()
        self.source = Source()
        self.refine = refine

    def forward(self, text: str) -> Any:
        return self.refine(self.source(text))


async def train_once(module: Pipeline, resources: ResourceManager) -> None:
    output = await module.bind(resources=resources).train()("tea")
    loss = await VerifierLoss(never_good)(output)
    await loss.backward()


async def test_a_custom_backward_on_a_dynamic_module_decides_where_feedback_goes(
    resources: ResourceManager,
) -> None:
    module = Pipeline(Routed())
    await train_once(module, resources)
    # called once, with the loss's feedback and the tape of its six calls at hand
    assert module.refine.seen == [("too long", 6)]
    assert module.source.heard == ["the task was unclear (too long)"]
    assert module.refine.style.feedback == ()


async def test_a_custom_backward_can_walk_the_tape_with_its_own_feedback(
    resources: ResourceManager,
) -> None:
    module = Pipeline(Focused())
    await train_once(module, resources)
    assert module.refine.seen == [("too long", 0)]
    # three rounds of writing, each told what the custom backward wrote
    assert len(module.refine.style.feedback) == 3
    assert all("focus on tone: too long" in text for text in module.refine.style.feedback)
    # what reached the forward's input travels on upstream
    assert len(module.source.heard) == 1
    assert "focus on tone: too long" in module.source.heard[0]


async def test_the_default_backward_of_a_dynamic_module_walks_its_tape(
    resources: ResourceManager,
) -> None:
    module = Pipeline(Refine())
    await train_once(module, resources)
    assert len(module.refine.style.feedback) == 3
    assert all("too long" in text for text in module.refine.style.feedback)
    assert len(module.source.heard) == 1


async def test_walk_inside_without_a_record_says_why() -> None:
    ctx = BackwardContext(node_id="leaf", inputs={}, output="x")
    with pytest.raises(BackwardError, match="nothing ran inside"):
        await ctx.walk_inside("bad")
