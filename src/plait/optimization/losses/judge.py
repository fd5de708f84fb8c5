"""LLMJudge: a free-form critique with a score, and the reviewer persona every LLM loss uses."""

from __future__ import annotations

import re
from typing import Any

from plait.feedback import Feedback
from plait.inference import LLMInference
from plait.optimization.losses.base import Loss, _Verdict, feedback
from plait.parameter import Parameter
from plait.values import to_text

JUDGE_SYSTEM = (
    "You are a strict reviewer of outputs produced by a language-model pipeline. Point out "
    "concretely what is wrong or missing and what the output should do instead."
)
_SCORE_LINE = re.compile(
    r"^[ \t*_#]*score[ \t*_]*[:=][ \t*_]*(\d+(?:\.\d+)?)[ \t]*(?:/[ \t]*(\d+(?:\.\d+)?))?.*$",
    re.IGNORECASE | re.MULTILINE,
)


class LLMJudge(Loss):
    """Free-form critique by an LLM, ending in ``SCORE: n`` (0 to 10) that becomes the score.

    A perfect score leaves the feedback empty, so nothing is sent upstream.
    """

    def __init__(
        self,
        alias: str = "judge",
        instructions: str | Parameter = "",
        *,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.instructions = instructions
        self.judge = LLMInference(alias, system_prompt=JUDGE_SYSTEM, temperature=temperature)
        self.verdict = _JudgeVerdict()

    def forward(self, output: Any, target: Any = None) -> Any:
        lines = ["Judge this output.", "<OUTPUT>", f"{output}", "</OUTPUT>"]
        if target is not None:
            lines += ["What a good output must achieve:", "<EXPECTED>", f"{target}", "</EXPECTED>"]
        if self.instructions:
            lines.append(f"{self.instructions}")
        lines.append(
            "Write a short critique: what is wrong and how the output should change. "
            "End with a line 'SCORE: n', where n is 0 (useless) to 10 (perfect)."
        )
        return self.verdict(output, self.judge("\n".join(lines)))


class _JudgeVerdict(_Verdict):
    def forward(self, output: Any, reply: Any) -> Feedback:
        text = to_text(reply)
        score = _parse_score(text)
        critique = _SCORE_LINE.sub("", text).strip()
        return feedback("" if score == 1.0 else critique, score)


def _parse_score(text: str) -> float | None:
    found = _SCORE_LINE.findall(text)
    if not found:
        return None
    value, scale = found[-1]
    top = float(scale) if scale else 10.0
    return min(max(float(value) / top, 0.0), 1.0) if top > 0 else None
