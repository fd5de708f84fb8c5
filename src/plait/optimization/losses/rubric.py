"""LLMRubricLoss: weighted criteria, each graded by an LLM through structured output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from plait.errors import ConfigError
from plait.feedback import Feedback
from plait.inference import LLMInference
from plait.optimization.losses.base import Loss, _as_model, _Verdict
from plait.optimization.losses.judge import JUDGE_SYSTEM
from plait.values import ValueKind


class RubricGrade(BaseModel):
    """One criterion's grade, as the rubric judge returns it."""

    criterion: int = Field(description="the criterion's number from the list")
    score: int = Field(description="0 (fails the criterion) to 10 (fully meets it)")
    feedback: str = Field(description="what falls short and how to fix it; empty if nothing")


class RubricGrades(BaseModel):
    """The rubric judge's structured reply."""

    grades: list[RubricGrade]


@dataclass(slots=True)
class RubricFeedback(Feedback):
    """A rubric loss's feedback, with the mark (0 to 10) of each criterion the judge graded."""

    grades: dict[str, int] = field(default_factory=dict)


class LLMRubricLoss(Loss):
    """Scored criteria with weights, graded by an LLM through structured output.

    ``criteria`` maps each criterion to its weight (or is a list, equally
    weighted). The score is the weighted mean of the grades over the criteria
    the judge graded; the feedback lists the shortfalls, heaviest first, and
    its ``grades`` hold each graded criterion's mark.
    """

    def __init__(
        self,
        criteria: Mapping[str, float] | Sequence[str],
        alias: str = "judge",
        *,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.criteria = _weighted(criteria)
        self.grader = LLMInference(
            alias, system_prompt=JUDGE_SYSTEM, temperature=temperature, response_format=RubricGrades
        )
        self.verdict = _RubricVerdict(self.criteria)

    def forward(self, output: Any, target: Any = None) -> Any:
        lines = ["Grade this output against each criterion.", "<OUTPUT>", f"{output}", "</OUTPUT>"]
        if target is not None:
            lines += ["What a good output must achieve:", "<EXPECTED>", f"{target}", "</EXPECTED>"]
        lines.append("Criteria:")
        lines += [f"{number}. {text}" for number, (text, _) in enumerate(self.criteria, 1)]
        lines.append(
            "Grade every criterion from 0 (fails) to 10 (fully meets), with feedback saying "
            "what falls short and how to fix it."
        )
        return self.verdict(output, self.grader("\n".join(lines)))


def _weighted(criteria: Mapping[str, float] | Sequence[str]) -> tuple[tuple[str, float], ...]:
    if isinstance(criteria, str):
        raise ConfigError("LLMRubricLoss criteria must be a list or a mapping, not one str")
    pairs = (
        [(str(text), weight) for text, weight in criteria.items()]
        if isinstance(criteria, Mapping)
        else [(str(text), 1.0) for text in criteria]
    )
    if not pairs:
        raise ConfigError("LLMRubricLoss needs at least one criterion")
    for text, weight in pairs:
        if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
            raise ConfigError(f"LLMRubricLoss weight for {text!r} must be a number >= 0")
    if sum(weight for _, weight in pairs) <= 0:
        raise ConfigError("LLMRubricLoss weights must not all be zero")
    return tuple((text, float(weight)) for text, weight in pairs)


class _RubricVerdict(_Verdict):
    def __init__(self, criteria: tuple[tuple[str, float], ...]) -> None:
        super().__init__()
        self.criteria = criteria

    def forward(self, output: Any, reply: Any) -> RubricFeedback:
        grades = _as_model(reply, RubricGrades)
        by_number = {grade.criterion: grade for grade in grades.grades}
        weighted = total = 0.0
        shortfalls: list[tuple[float, str]] = []
        marks: dict[str, int] = {}
        for number, (text, weight) in enumerate(self.criteria, 1):
            grade = by_number.get(number)
            if grade is None:
                continue
            mark = min(max(grade.score, 0), 10)
            marks[text] = mark
            weighted += weight * mark / 10
            total += weight
            if mark < 10 and weight > 0 and grade.feedback.strip():
                line = f"- {text} (score {mark}/10, weight {weight:g}): {grade.feedback.strip()}"
                shortfalls.append((weight * (10 - mark), line))
        shortfalls.sort(key=lambda item: -item[0])
        score = weighted / total if total else None
        text = "\n".join(line for _, line in shortfalls)
        return RubricFeedback(ValueKind.TEXT, text, score=score, grades=marks)
