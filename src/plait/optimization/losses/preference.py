"""LLMPreferenceLoss: an LLM ranks or pairs up candidate outputs, each gets its own feedback."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, Field

from plait.errors import ConfigError
from plait.execution.call import Call
from plait.feedback import BackwardContext, BackwardResult, Feedback, text_feedback
from plait.inference import LLMInference
from plait.module import Module
from plait.optimization.losses.base import Loss, _as_feedback, _as_model, _targets, _Verdict
from plait.optimization.losses.judge import JUDGE_SYSTEM
from plait.tracing.context import current_tracer
from plait.values import unwrap


class CandidateFeedback(BaseModel):
    candidate: int = Field(description="the candidate's number")
    feedback: str = Field(description="how it falls short of the best possible output")


class Ranking(BaseModel):
    """The preference judge's reply in ranking mode."""

    ranking: list[int] = Field(description="candidate numbers, best first")
    feedback: list[CandidateFeedback]


class PairVerdict(BaseModel):
    """The preference judge's reply for one pair in pairwise mode."""

    better: Literal["A", "B"]
    feedback_a: str = Field(description="how output A falls short")
    feedback_b: str = Field(description="how output B falls short")


class LLMPreferenceLoss(Loss):
    """An LLM compares candidate outputs: ``await loss_fn([out1, out2, ...], target=None)``.

    ``mode="ranking"`` asks for one ranking of all candidates;
    ``mode="pairwise"`` compares every pair and scores each candidate by its
    share of wins. Each candidate gets its own feedback and score (the
    loss's ``items``), and backward sends each to the forward pass that
    produced it. ``score`` is the first candidate's score (put the output
    being trained first).
    """

    def __init__(
        self,
        alias: str = "judge",
        mode: Literal["ranking", "pairwise"] = "ranking",
        criteria: str = "",
        *,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("ranking", "pairwise"):
            raise ConfigError(
                f"LLMPreferenceLoss mode must be 'ranking' or 'pairwise', not {mode!r}"
            )
        self.mode = mode
        self.criteria = criteria
        self.judge = LLMInference(
            alias,
            system_prompt=JUDGE_SYSTEM,
            temperature=temperature,
            response_format=Ranking if mode == "ranking" else PairVerdict,
        )
        self.verdict = _PreferenceVerdict(mode)

    def __call__(self, candidates: Any, target: Any = None) -> Any:
        if not isinstance(candidates, list | tuple) or len(candidates) < 2:
            raise ConfigError("LLMPreferenceLoss compares a list of at least two candidates")
        if current_tracer() is not None:
            return Module.__call__(self, *candidates, target=target)
        return self._compare(list(candidates), target)

    def forward(self, *candidates: Any, target: Any = None) -> Any:
        if self.mode == "ranking":
            lines = [f"Rank these {len(candidates)} candidate outputs from best to worst."]
            lines += self._context(target)
            for number, candidate in enumerate(candidates, 1):
                lines += [f'<CANDIDATE number="{number}">', f"{candidate}", "</CANDIDATE>"]
            lines.append(
                "Give the candidate numbers best first, and for every candidate feedback on "
                "how it falls short of the best possible output."
            )
            verdicts = [self.judge("\n".join(lines))]
        else:
            verdicts = []
            for first, second in itertools.combinations(candidates, 2):
                lines = ["Which of these two outputs is better?", *self._context(target)]
                lines += ["<A>", f"{first}", "</A>", "<B>", f"{second}", "</B>"]
                lines.append("Say which is better, and how each falls short.")
                verdicts.append(self.judge("\n".join(lines)))
        return self.verdict(*candidates, verdicts=verdicts)

    def _context(self, target: Any) -> list[str]:
        lines = [self.criteria] if self.criteria else []
        if target is not None:
            lines += ["What a good output must achieve:", "<EXPECTED>", f"{target}", "</EXPECTED>"]
        return lines

    async def _compare(self, candidates: list[Any], target: Any) -> Feedback:
        args = tuple(unwrap(candidate) for candidate in candidates)
        kwargs = {} if target is None else {"target": unwrap(target)}
        value = _as_feedback(await Call.single(self, args, kwargs, self._settings(candidates)))
        value.targets = _targets(
            candidates,
            [str(item) for item in value.items],
            [item.score for item in value.items],
        )
        return value


class _PreferenceVerdict(_Verdict):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, *candidates: Any, verdicts: list[Any]) -> Feedback:
        count = len(candidates)
        notes: list[list[str]] = [[] for _ in range(count)]
        if self.mode == "ranking":
            ranking = _as_model(verdicts[0], Ranking)
            order = [n - 1 for n in dict.fromkeys(ranking.ranking) if 1 <= n <= count]
            order += [index for index in range(count) if index not in order]
            scores = [0.0] * count
            for place, index in enumerate(order):
                scores[index] = 1 - place / (count - 1)
            for item in ranking.feedback:
                if 1 <= item.candidate <= count and item.feedback.strip():
                    notes[item.candidate - 1].append(item.feedback.strip())
        else:
            wins = [0] * count
            pairs = itertools.combinations(range(count), 2)
            for (first, second), reply in zip(pairs, verdicts, strict=True):
                verdict = _as_model(reply, PairVerdict)
                wins[first if verdict.better == "A" else second] += 1
                for index, text in ((first, verdict.feedback_a), (second, verdict.feedback_b)):
                    if text.strip():
                        notes[index].append(text.strip())
            scores = [won / (count - 1) for won in wins]
            order = sorted(range(count), key=lambda index: -wins[index])
        feedbacks = ["\n".join(dict.fromkeys(texts)) for texts in notes]
        lines = [f"Best first: {', '.join(str(index + 1) for index in order)}."]
        lines += [f"Candidate {index + 1}: {text}" for index, text in enumerate(feedbacks) if text]
        items = tuple(
            text_feedback(text, score) for text, score in zip(feedbacks, scores, strict=True)
        )
        verdict = text_feedback("\n".join(lines), scores[0])
        verdict.items = items
        return verdict

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        items = ctx.output.items if isinstance(ctx.output, Feedback) else ()
        return BackwardResult(
            inputs={index: str(item) for index, item in enumerate(items) if str(item)}
        )
