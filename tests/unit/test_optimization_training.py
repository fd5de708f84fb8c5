"""The fit/evaluate helpers: epochs, mini-batches, validation, best state kept."""

from __future__ import annotations

from typing import Any

import pytest

from plait import ExecutionSettings, LLMInference, Module, Parameter
from plait.backward_prompt import HEADER
from plait.errors import ConfigError
from plait.optimization import EpochReport, FeedbackOptimizer, VerifierLoss, evaluate, fit
from plait.optimization.optimizer import UPDATE_HEADER
from plait.testing import FakeResources
from support.resources import replying


class Styled(Module):
    """The style is part of the user prompt, so the fake's echo shows which one was used."""

    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("Meh.", description="answer style")
        self.answer = LLMInference("fast")

    def forward(self, question: str) -> Any:
        return self.answer(f"{self.style} {question}")


def passes(output: Any, target: str) -> str | None:
    return None if target in str(output) else f"needs {target}"


def scripted(rewrites: list[str]) -> FakeResources:
    proposals = iter(rewrites)

    def reply(alias: str, prompt: str) -> str:
        if prompt.startswith(HEADER):
            return '<FEEDBACK item="p1">change the style</FEEDBACK>'
        if prompt.startswith(UPDATE_HEADER):
            return f"<VALUE>{next(proposals)}</VALUE>"
        return f"{alias}({prompt})"

    return FakeResources(replying(reply), aliases=("fast", "optimizer"))


TRAIN = [("q1", "Good"), ("q2", "impossible"), ("q3", "Good"), ("q4", "impossible")]
VALIDATION = [("v1", "Good"), ("v2", "Good")]


async def test_fit_scores_every_epoch_and_restores_the_best_state() -> None:
    resources = scripted(["Good.", "Bad."])
    module = Styled()
    seen: list[EpochReport] = []
    async with ExecutionSettings(resources=resources):
        report = await fit(
            module,
            VerifierLoss(passes),
            FeedbackOptimizer(module.parameters()),
            TRAIN,
            VALIDATION,
            epochs=2,
            batch_size=4,
            on_epoch=seen.append,
            accept_worse=True,  # let epoch 2 get worse, to see keep_best roll it back
        )
    assert report.val_scores == [0.0, 1.0, 0.0]
    assert [epoch.train_score for epoch in report.epochs] == [None, 0.0, 0.5]
    assert [len(epoch.updates) for epoch in report.epochs] == [0, 1, 1]
    assert (report.best_epoch, report.best_score) == (1, 1.0)
    assert report.best_state == {"style": "Good."}
    assert module.style.value == "Good."  # the worse epoch-2 value was rolled back
    assert not module.training
    assert seen == report.epochs


async def test_mini_batches_each_take_an_optimizer_step() -> None:
    resources = scripted(["A.", "B.", "C.", "D."])
    module = Styled()
    async with ExecutionSettings(resources=resources):
        report = await fit(
            module,
            VerifierLoss(passes),
            FeedbackOptimizer(module.parameters()),
            TRAIN,
            epochs=1,
            batch_size=1,
            keep_best=False,
            shuffle=False,
        )
    assert [update.new for update in report.epochs[1].updates] == ["A.", "B.", "C.", "D."]
    assert module.style.value == "D."


async def test_evaluate_runs_in_eval_mode_and_leaves_the_mode_as_it_was() -> None:
    resources = scripted([])
    module = Styled().bind(resources)
    module.style.apply_update("Good.")
    module.train()
    assert await evaluate(module, VerifierLoss(passes), VALIDATION) == 1.0
    assert module.training
    assert await evaluate(module, VerifierLoss(passes), []) is None


async def test_fit_rejects_bad_arguments() -> None:
    module = Styled()
    optimizer = FeedbackOptimizer(module.parameters())
    with pytest.raises(ConfigError):
        await fit(module, VerifierLoss(passes), optimizer, TRAIN, epochs=0)
    with pytest.raises(ConfigError):
        await fit(module, VerifierLoss(passes), optimizer, TRAIN, batch_size=0)
    with pytest.raises(ConfigError, match="non-empty"):
        await fit(module, VerifierLoss(passes), optimizer, [])
