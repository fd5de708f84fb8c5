"""Training end to end over real loopback HTTP, with the simulator's scripted replies.

The scripted model echoes forward calls, answers backward prompts with feedback
that names the call it judged, rewrites values in optimizer prompts, and grades
judge prompts, so every claim below is checked on what really crossed the wire.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference, Module, Parameter
from plait.backward_prompt import HEADER
from plait.optimization import (
    CompositeLoss,
    FeedbackOptimizer,
    LLMJudge,
    LLMPreferenceLoss,
    LLMRubricLoss,
    Loss,
    VerifierLoss,
)
from plait.optimization.optimizer import UPDATE_HEADER
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator

ROOT = Path(__file__).resolve().parents[2]


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class Script:
    """The simulated model; keeps every prompt it was sent, in arrival order."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str | dict[str, Any]:
        prompt = str(body["messages"][-1]["content"])
        self.prompts.append(prompt)
        if prompt.startswith(HEADER):
            judged = re.findall(r"^\[user\] (.*)$", prompt, re.MULTILINE)[0]
            items = re.findall(r'<FEEDBACK item="([^"]+)">\.\.\.</FEEDBACK>', prompt)
            return "".join(f'<FEEDBACK item="{i}">{i} of [{judged}]</FEEDBACK>' for i in items)
        if prompt.startswith(UPDATE_HEADER):
            current = between(prompt, "<CURRENT_VALUE>\n", "\n</CURRENT_VALUE>")
            return f"<SUMMARY>ok</SUMMARY><VALUE>{current} Be concrete.</VALUE>"
        if prompt.startswith("Judge this output."):
            return "Needs an example.\nSCORE: 6"
        if prompt.startswith("Grade this output"):
            return {"grades": [{"criterion": 1, "score": 3, "feedback": "Add an example."}]}
        if prompt.startswith("Rank these"):
            return {"ranking": [2, 1], "feedback": [{"candidate": 1, "feedback": "Vaguer."}]}
        return "ECHO " + prompt

    def sent(self, header: str) -> list[str]:
        return [prompt for prompt in self.prompts if prompt.startswith(header)]


@pytest.fixture
async def served() -> AsyncIterator[tuple[Script, Simulator, ResourceManager]]:
    script = Script()
    async with Simulator(latency=0.02, reply=script) as sim:
        endpoint = {"model": "sim", "base_url": sim.base_url, "api_key": "test-key"}
        resources = ResourceManager(
            ResourceConfig(
                {
                    "fast": {**endpoint, "max_concurrent": 16},
                    "judge": endpoint,
                    "optimizer": {**endpoint, "max_concurrent": 2},
                }
            )
        )
        try:
            yield script, sim, resources
        finally:
            await resources.aclose()


class ThreeStage(Module):
    """plan -> write -> edit, with two learnable prompts and one frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.plan_style = Parameter("Plan briefly.", description="how the planner plans")
        self.write_style = Parameter("Write plainly.", description="how the writer writes")
        self.house_rules = Parameter("Follow the house rules.", requires_grad=False)
        self.planner = LLMInference("fast", system_prompt=self.plan_style)
        self.writer = LLMInference("fast", system_prompt=self.write_style)
        self.editor = LLMInference("fast", system_prompt=self.house_rules)

    def forward(self, topic: str) -> Any:
        plan = self.planner(f"Plan: {topic}")
        draft = self.writer(f"Write from: {plan}")
        return self.editor(f"Edit: {draft}")


def never_good(output: Any, target: Any) -> str:
    return f"does not mention {target}"


async def test_a_training_step_on_a_three_stage_pipeline(
    served: tuple[Script, Simulator, ResourceManager],
) -> None:
    script, _, resources = served
    pipeline = ThreeStage().bind(resources).train()
    outputs = await pipeline(["tea", "rain"])
    records = [output.record for output in outputs]

    loss = await VerifierLoss(never_good)(outputs, ["milk", "umbrellas"])
    await loss.backward()

    # feedback reaches exactly the learnable parameters upstream of the judged output,
    # once per example of the mini-batch
    assert sorted(pipeline.plan_style.feedback) == ["p1 of [Plan: rain]", "p1 of [Plan: tea]"]
    assert sorted(pipeline.write_style.feedback) == [
        "p1 of [Write from: ECHO Plan: rain]",
        "p1 of [Write from: ECHO Plan: tea]",
    ]
    assert pipeline.house_rules.feedback == ()
    assert len(script.sent(HEADER)) == 6
    assert all(record.released for record in records)

    optimizer = FeedbackOptimizer(pipeline.parameters()).bind(resources)
    updates = await optimizer.step()

    assert [update.parameter for update in updates] == [pipeline.plan_style, pipeline.write_style]
    assert pipeline.plan_style.value == "Plan briefly. Be concrete."
    assert pipeline.write_style.value == "Write plainly. Be concrete."
    assert pipeline.house_rules.value == "Follow the house rules."
    first, second = script.sent(UPDATE_HEADER)
    assert "how the planner plans" in first
    assert "Plan briefly. Be concrete." in between(second, "<UPSTREAM>", "</UPSTREAM>")
    assert pipeline.plan_style.feedback == pipeline.write_style.feedback == ()

    pipeline.eval()
    assert await pipeline("tea") == "ECHO Edit: ECHO Write from: ECHO Plan: tea"


class Shared(Module):
    """Two parallel calls under one learnable style, joined by a third."""

    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("Be brief.", description="shared style")
        self.pro = LLMInference("fast", system_prompt=self.style)
        self.con = LLMInference("fast", system_prompt=self.style)
        self.join = LLMInference("fast")

    def forward(self, topic: str) -> Any:
        return self.join(f"{self.pro(f'Pro: {topic}')} vs {self.con(f'Con: {topic}')}")


async def test_fan_out_feedback_accumulates_and_backward_calls_respect_endpoint_limits(
    served: tuple[Script, Simulator, ResourceManager],
) -> None:
    script, sim, resources = served
    pipeline = Shared().bind(resources).train()
    outputs = await pipeline(["a", "b", "c"])
    loss = await VerifierLoss(never_good)(outputs, ["x", "y", "z"])
    sim.reset_stats()
    await loss.backward()
    assert len(pipeline.style.feedback) == 6  # two calls per example, three examples
    assert len(script.sent(HEADER)) == 9  # join, pro and con of each example
    assert sim.stats().peak_concurrency == 2  # the optimizer endpoint's max_concurrent


def loss_cases() -> list[tuple[Loss, float]]:
    return [
        (VerifierLoss(never_good), 0.0),
        (LLMJudge(), 0.6),
        (LLMRubricLoss({"has an example": 1.0}), 0.3),
        (CompositeLoss([(VerifierLoss(never_good), 1.0), (LLMJudge(), 1.0)]), 0.3),
    ]


@pytest.mark.parametrize(("loss_fn", "score"), loss_cases(), ids=lambda case: type(case).__name__)
async def test_every_loss_produces_feedback_and_a_score_over_http(
    served: tuple[Script, Simulator, ResourceManager], loss_fn: Loss, score: float
) -> None:
    _, _, resources = served
    pipeline = ThreeStage().bind(resources).train()
    loss = await loss_fn(await pipeline("tea"), "milk")
    assert str(loss)
    assert loss.score == pytest.approx(score)
    await loss.backward()
    assert pipeline.plan_style.feedback
    assert pipeline.write_style.feedback


async def test_preference_loss_over_http(
    served: tuple[Script, Simulator, ResourceManager],
) -> None:
    _, _, resources = served
    pipeline = ThreeStage().bind(resources).train()
    candidates = await pipeline(["tea", "coffee"])
    loss = await LLMPreferenceLoss()(candidates)
    assert [item.score for item in loss.items] == [0.0, 1.0]
    assert "Candidate 1: Vaguer." in str(loss)
    await loss.backward()
    assert pipeline.plan_style.feedback == ("p1 of [Plan: tea]",)


def test_the_prompt_tuning_example_improves_its_validation_score(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("PLAIT_BASE_URL", raising=False)
    spec = importlib.util.spec_from_file_location(
        "prompt_tuning_example", ROOT / "examples" / "prompt_tuning.py"
    )
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "prompt_tuning_example", example)
    spec.loader.exec_module(example)

    report = example.main()

    scores = report.val_scores
    assert scores[0] == 0.0
    assert all(later >= earlier for earlier, later in itertools.pairwise(scores))
    assert scores[1] > scores[0]
    assert scores[-1] == 1.0
    assert report.best_score == 1.0
    printed = capsys.readouterr().out
    assert "epoch 0: validation score 0.00" in printed
    assert "Saved to JSON and loaded back: True" in printed
    assert json.dumps(report.best_state)  # the learned state is plain JSON data
