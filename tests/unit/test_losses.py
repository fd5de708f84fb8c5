"""Every loss: feedback text and score, called directly and inside a traced training step."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plait import LLMInference, Module, Parameter, Value, ValueKind
from plait.backward_prompt import HEADER
from plait.errors import ConfigError, LossCheckError
from plait.feedback import Feedback
from plait.optimization import (
    CompositeLoss,
    LLMJudge,
    LLMPreferenceLoss,
    LLMRubricLoss,
    Loss,
    VerifierLoss,
    feedback,
)
from plait.optimization.losses.judge import _parse_score
from plait.optimization.losses.rubric import RubricGrades
from plait.testing import FakeResources
from support.resources import replying

RUBRIC = {
    "grades": [
        {"criterion": 1, "score": 5, "feedback": "Cut the second paragraph."},
        {"criterion": 2, "score": 10, "feedback": ""},
    ]
}
RANKING = {
    "ranking": [2, 3, 1],
    "feedback": [
        {"candidate": 1, "feedback": "Misses the point."},
        {"candidate": 3, "feedback": "Too long."},
    ],
}


def judge_replies(alias: str, prompt: str) -> str:
    if prompt.startswith(HEADER):
        critique = prompt.split("<CRITIQUE>\n", 1)[1].split("\n</CRITIQUE>", 1)[0]
        return f'<FEEDBACK item="p1">{critique}</FEEDBACK>'
    if alias != "judge":
        return f"{alias}({prompt})"
    if prompt.startswith("Judge this output."):
        return "Too long; drop the preamble.\nSCORE: 4"
    if prompt.startswith("Grade this output"):
        return json.dumps(RUBRIC)
    if prompt.startswith("Rank these"):
        return json.dumps(RANKING)
    first = prompt.split("<A>\n", 1)[1].split("\n</A>", 1)[0]
    second = prompt.split("<B>\n", 1)[1].split("\n</B>", 1)[0]
    better = "A" if len(first) <= len(second) else "B"
    return json.dumps({"better": better, "feedback_a": f"A={first}", "feedback_b": f"B={second}"})


def fake() -> FakeResources:
    return FakeResources(replying(judge_replies), aliases=("fast", "judge", "optimizer"))


class Answer(Module):
    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("Answer.", description="how answers are written")
        self.answer = LLMInference("fast", system_prompt=self.style)

    def forward(self, question: str) -> Any:
        return self.answer(question)


def mentions_target(output: Any, target: Any) -> str | None:
    return None if target in str(output) else f"should mention {target}"


def judge_prompts(resources: FakeResources) -> list[str]:
    return [call.prompt for call in resources.calls if call.alias == "judge"]


async def test_verifier_loss_scores_passes_and_failures() -> None:
    loss_fn = VerifierLoss(mentions_target)
    passed = await loss_fn("tea with milk", "milk")
    failed = await loss_fn("black tea", "milk")
    assert (passed.kind, passed.payload, passed.score) == (ValueKind.TEXT, "", 1.0)
    assert (str(failed), failed.score) == ("should mention milk", 0.0)

    async def slow_check(output: Any, target: Any) -> str | None:
        return None if output == target else "different"

    assert (await VerifierLoss(slow_check)("a", "b")).score == 0.0
    with pytest.raises(TypeError, match="None or a feedback str") as raised:
        await VerifierLoss(lambda output, target: 3)("a")  # type: ignore[arg-type, return-value]
    assert isinstance(raised.value, LossCheckError)
    with pytest.raises(ConfigError):
        VerifierLoss("not callable")  # type: ignore[arg-type]


async def test_llm_judge_turns_a_critique_into_feedback_and_a_score() -> None:
    resources = fake()
    loss = await LLMJudge().bind(resources)("Well, here goes: tea.", "a one-word answer")
    assert str(loss) == "Too long; drop the preamble."
    assert loss.score == pytest.approx(0.4)
    (prompt,) = judge_prompts(resources)
    assert "<OUTPUT>\nWell, here goes: tea.\n</OUTPUT>" in prompt
    assert "<EXPECTED>\na one-word answer\n</EXPECTED>" in prompt
    assert "SCORE: n" in prompt


@pytest.mark.parametrize(
    ("reply", "score", "critique"),
    [
        ("Fine.\nSCORE: 10", 1.0, ""),
        ("Vague.\n**Score:** 7/10", 0.7, "Vague."),
        ("Vague.\nscore = 3 / 5", 0.6, "Vague."),
        ("No score given at all.", None, "No score given at all."),
    ],
)
async def test_llm_judge_reads_scores_in_the_forms_models_write(
    reply: str, score: float | None, critique: str
) -> None:
    resources = FakeResources(replying(lambda alias, prompt: reply), aliases=("judge",))
    loss = await LLMJudge().bind(resources)("output")
    assert loss.score == (None if score is None else pytest.approx(score))
    assert str(loss) == critique
    assert _parse_score("SCORE: 12") == 1.0


async def test_rubric_loss_weights_graded_criteria_through_structured_output() -> None:
    resources = fake()
    rubric = LLMRubricLoss({"concise": 2.0, "accurate": 1.0, "polite": 1.0}).bind(resources)
    loss = await rubric("A long answer.")
    assert loss.score == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)  # "polite" ungraded
    assert str(loss) == "- concise (score 5/10, weight 2): Cut the second paragraph."
    assert loss.grades == {"concise": 5, "accurate": 10}
    (call,) = [call for call in resources.calls if call.alias == "judge"]
    assert call.request is not None
    assert call.request.response_format is RubricGrades
    assert "1. concise\n2. accurate\n3. polite" in call.prompt


def test_rubric_loss_rejects_bad_criteria() -> None:
    bad: list[Any] = [{}, [], "concise", {"a": -1.0}, {"a": 0.0}]
    for criteria in bad:
        with pytest.raises(ConfigError):
            LLMRubricLoss(criteria)
    assert LLMRubricLoss(["a", "b"]).criteria == (("a", 1.0), ("b", 1.0))


async def test_preference_ranking_gives_each_candidate_its_own_score_and_feedback() -> None:
    resources = fake()
    pipeline = Answer().bind(resources).train()
    candidates = await pipeline(["q1", "q2", "q3"])
    loss = await LLMPreferenceLoss().bind(resources)(candidates, "short answers")
    assert [item.score for item in loss.items] == [0.0, 1.0, 0.5]
    assert loss.score == 0.0
    assert [str(item) for item in loss.items] == ["Misses the point.", "", "Too long."]
    assert str(loss).startswith("Best first: 2, 3, 1.")
    (prompt,) = judge_prompts(resources)
    assert '<CANDIDATE number="3">\nfast(q3)\n</CANDIDATE>' in prompt
    await loss.backward()
    assert sorted(pipeline.style.feedback) == ["Misses the point.", "Too long."]
    assert sorted(pipeline.style.scores) == [0.0, 0.5, 1.0]


async def test_preference_pairwise_scores_by_share_of_wins() -> None:
    resources = fake()
    loss = await LLMPreferenceLoss(mode="pairwise").bind(resources)(["aaa", "a", "aa"])
    assert len(judge_prompts(resources)) == 3
    assert [item.score for item in loss.items] == [0.0, 1.0, 0.5]
    assert str(loss.items[1]) == "B=a\nA=a"
    with pytest.raises(ConfigError, match="at least two"):
        LLMPreferenceLoss()(["alone"])
    with pytest.raises(ConfigError, match="mode"):
        LLMPreferenceLoss(mode="tournament")  # type: ignore[arg-type]


async def test_composite_loss_weights_scores_and_labels_feedback() -> None:
    resources = fake()
    composite = CompositeLoss(
        {
            "verifier": (VerifierLoss(mentions_target), 1.0),
            "judge": (LLMJudge(), 3.0),
            "ignored": (VerifierLoss(lambda output, target: "never shown"), 0.0),
        }
    ).bind(resources)
    loss = await composite("black tea", "milk")
    assert loss.score == pytest.approx((1 * 0.0 + 3 * 0.4) / 4)
    assert str(loss) == (
        "[verifier, weight 1] should mention milk\n\n[judge, weight 3] Too long; drop the preamble."
    )
    assert set(loss.parts) == {"verifier", "judge", "ignored"}
    with pytest.raises(ConfigError, match="one output"):
        CompositeLoss([(LLMPreferenceLoss(), 1.0)])
    with pytest.raises(ConfigError, match="pair"):
        CompositeLoss([(mentions_target, 1.0)])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        CompositeLoss([])


def every_loss() -> list[Loss]:
    return [
        VerifierLoss(mentions_target),
        LLMJudge(),
        LLMRubricLoss({"concise": 1.0, "accurate": 1.0}),
        CompositeLoss([(VerifierLoss(mentions_target), 1.0), (LLMJudge(), 1.0)]),
    ]


class Step(Module):
    def __init__(self, loss: Loss) -> None:
        super().__init__()
        self.pipeline = Answer()
        self.loss = loss

    def forward(self, question: str, target: str) -> Any:
        return self.loss(self.pipeline(question), target)


@pytest.mark.parametrize("loss_fn", every_loss(), ids=lambda loss: type(loss).__name__)
async def test_every_loss_works_directly_and_inside_a_traced_step(loss_fn: Loss) -> None:
    resources = fake()
    pipeline = Answer().bind(resources).train()
    direct = await loss_fn(await pipeline("tea?"), "milk")
    assert isinstance(direct, Feedback)
    assert str(direct)
    assert isinstance(direct.score, float)
    assert 0.0 <= direct.score < 1.0
    await direct.backward()
    assert len(pipeline.style.feedback) == 1

    step = Step(loss_fn).bind(resources).train()
    resources.calls.clear()
    traced = await step("tea?", "milk")
    assert (str(traced), traced.score) == (str(direct), direct.score)
    assert type(traced) is type(direct)  # a family's own fields survive either way
    await traced.backward()
    assert len(step.pipeline.style.feedback) == 1
    backward_calls = [c.prompt for c in resources.calls if c.alias == "optimizer"]
    assert len(backward_calls) == 1  # only the pipeline's call, never the judge's own
    assert "[user] tea?" in backward_calls[0]


class TwoAnswers(Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Answer()
        self.second = Answer()
        self.prefer = LLMPreferenceLoss()

    def forward(self, question: str) -> Any:
        return self.prefer([self.first(question), self.second(f"{question}!")])


async def test_preference_inside_a_traced_step_routes_feedback_per_candidate() -> None:
    resources = fake()
    step = TwoAnswers().bind(resources).train()
    loss = await step("q")
    assert [item.score for item in loss.items] == [0.0, 1.0]
    await loss.backward()
    assert step.first.style.feedback == ("Misses the point.",)
    assert step.second.style.feedback == ()


async def test_a_batch_of_outputs_gives_one_feedback_with_the_mean_score() -> None:
    resources = fake()
    pipeline = Answer().bind(resources).train()
    outputs = await pipeline(["milk?", "tea?"])
    loss = await VerifierLoss(mentions_target)(outputs, ["milk", "milk"])
    assert loss.score == 0.5
    assert str(loss) == "Example 2: should mention milk"
    assert [item.score for item in loss.items] == [1.0, 0.0]
    assert len(loss.targets) == 2
    with pytest.raises(ConfigError, match="list of 2 targets"):
        await VerifierLoss(mentions_target)(outputs, ["milk"])


async def test_a_loss_uses_the_forward_resources_unless_it_has_its_own() -> None:
    forward_side = fake()
    output = await Answer().bind(forward_side).train()("tea?")
    await LLMJudge()(output)
    assert len(judge_prompts(forward_side)) == 1
    own = fake()
    await LLMJudge().bind(own)(output)
    assert len(judge_prompts(own)) == 1
    assert len(judge_prompts(forward_side)) == 1


class Length(Loss):
    """A custom loss: no children, so its forward runs on real values."""

    def forward(self, output: Any, target: Any = None) -> Value:
        text = str(output)
        return feedback("" if len(text) < 10 else "shorter please", min(1.0, 10 / len(text)))


async def test_a_custom_loss_returns_feedback_and_backpropagates() -> None:
    resources = fake()
    pipeline = Answer().bind(resources).train()
    loss = await Length()(await pipeline("a long question"))
    assert str(loss) == "shorter please"
    assert loss.score == pytest.approx(10 / len("fast(a long question)"))
    await loss.backward()
    assert pipeline.style.feedback != ()
