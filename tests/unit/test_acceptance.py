"""The acceptance rule FeedbackOptimizer and fit share: a valid value, no worse on the dev set."""

from __future__ import annotations

from typing import Any

import pytest

from plait import ExecutionSettings, LLMInference, Module, Parameter
from plait.backward_prompt import HEADER
from plait.optimization import FeedbackOptimizer, VerifierLoss, fit
from plait.optimization.optimizer import UPDATE_HEADER
from plait.testing import FakeResources
from support.resources import replying


def one_reply(reply: str) -> FakeResources:
    return FakeResources(replying(lambda alias, prompt: reply), aliases=("optimizer",))


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("<VALUE>Be brief. </FEEDBACK></VALUE>", "rejected: leftover markers </FEEDBACK>"),
        ("<VALUE>Be brief. <<<</VALUE>", "rejected: leftover markers <<<"),
        (f"{UPDATE_HEADER}\nSummarise what the feedback asks", "rejected: an echo"),
    ],
)
async def test_a_reply_that_is_no_value_is_refused(reply: str, reason: str) -> None:
    param = Parameter("Be short.", description="the answer style")
    param.accumulate_feedback("too long")
    [update] = await FeedbackOptimizer([param], resources=one_reply(reply)).step()
    assert not update.applied
    assert update.reason.startswith(reason)
    assert param.value == "Be short."


async def test_a_prompt_pasted_back_without_markers_is_refused() -> None:
    param = Parameter("Be short.", description="the answer style")
    param.accumulate_feedback("answers run on for pages and pages")

    def paste_back(alias: str, prompt: str) -> str:
        return "\n".join(line for line in prompt.splitlines() if "<" not in line)

    resources = FakeResources(replying(paste_back), aliases=("optimizer",))
    [update] = await FeedbackOptimizer([param], resources=resources).step()
    assert update.reason == "rejected: an echo of the optimizer's prompt"
    assert param.value == "Be short."


class Styled(Module):
    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = Parameter(style, description="answer style")
        self.answer = LLMInference("fast")

    def forward(self, question: str) -> Any:
        return self.answer(f"{self.style} {question}")


def scripted(rewrites: list[str]) -> FakeResources:
    proposals = iter(rewrites)

    def reply(alias: str, prompt: str) -> str:
        if prompt.startswith(HEADER):
            return '<FEEDBACK item="p1">change the style</FEEDBACK>'
        if prompt.startswith(UPDATE_HEADER):
            return f"<VALUE>{next(proposals)}</VALUE>"
        return f"{alias}({prompt})"

    return FakeResources(replying(reply), aliases=("fast", "optimizer"))


def mentions(output: Any, target: str) -> str | None:
    return None if target in str(output) else f"needs {target}"


TRAIN = [("q1", "Good"), ("q2", "impossible")]
DEV = [("v1", "Good"), ("v2", "Good")]


async def test_fit_undoes_a_step_that_scores_worse_on_the_dev_set() -> None:
    module = Styled("Good.")
    async with ExecutionSettings(resources=scripted(["Bad.", "Good, really."])):
        report = await fit(
            module,
            VerifierLoss(mentions),
            FeedbackOptimizer(module.parameters()),
            TRAIN,
            DEV,
            epochs=2,
            batch_size=2,
            shuffle=False,
            keep_best=False,  # so the end state is what the steps kept
        )
    assert report.val_scores == [1.0, 1.0, 1.0]
    [first], [second] = (epoch.updates for epoch in report.epochs[1:])
    assert (first.new, first.applied) == ("Bad.", False)
    assert first.reason == "rejected: the dev score fell to 0.00 from 1.00"
    assert (second.new, second.applied) == ("Good, really.", True)
    assert module.style.value == "Good, really."


async def test_without_a_dev_set_every_valid_step_is_kept() -> None:
    module = Styled("Good.")
    async with ExecutionSettings(resources=scripted(["Bad."])):
        report = await fit(
            module,
            VerifierLoss(mentions),
            FeedbackOptimizer(module.parameters()),
            TRAIN,
            epochs=1,
            batch_size=2,
            keep_best=False,
        )
    assert report.epochs[1].updates[0].applied
    assert module.style.value == "Bad."
