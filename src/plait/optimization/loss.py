"""Losses: Modules that judge outputs and return feedback.

A loss returns a :class:`~plait.feedback.Feedback`: its text says what is
wrong with the output (empty when nothing is) and ``score`` rates it from 0
to 1, higher being better (None when the judge gave no score).

A loss works two ways. Called directly, ``await loss_fn(output, target)``
runs on the engine and the feedback remembers the forward record(s) that
``output`` carries, so ``await loss.backward()`` can walk them; a list of
training-mode outputs (a mini-batch) gives one feedback for the batch. Called
inside a traced training step, ``loss = await step(x, target)``, its LLM calls
become nodes of the step's graph and run with the pipeline's. Either way the
loss's last node passes feedback only to the output it judged, never to the
judge's own calls.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from statistics import fmean
from typing import Any, Literal

from pydantic import BaseModel, Field

from plait.errors import ConfigError
from plait.execution.call import Call
from plait.execution.settings import resolve_settings
from plait.feedback import BackwardContext, BackwardResult, Feedback, FeedbackTarget, text_feedback
from plait.inference import LLMInference
from plait.module import Module
from plait.parameter import Parameter
from plait.tracing.context import current_tracer
from plait.values import Value, to_text, unwrap

Check = Callable[[Any, Any], str | Awaitable[str | None] | None]


def feedback(text: str = "", score: float | None = None, **details: Any) -> Feedback:
    """A Feedback; return one from the ``forward`` of a custom loss."""
    return text_feedback(text, score, **details)


class Loss(Module):
    """Base of every loss: ``await loss_fn(output, target=None)`` returns feedback.

    Subclasses write ``forward(output, target=None)`` returning
    :func:`feedback`. Without child modules, ``forward`` runs on real values
    (it may be ``async``); with children (say an ``LLMInference`` judge) it is
    traced like any pipeline.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_tracer() is not None:
            return super().__call__(*args, **kwargs)
        return self._judge(*args, **kwargs)

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        """A loss that runs as one node sends its feedback to the judged output only."""
        return BackwardResult(inputs={0: feedback})

    async def _judge(self, output: Any, target: Any = None) -> Feedback:
        if _is_batch(output):
            targets = _batch_targets(target, len(output))
            items = [_arguments(out, tgt) for out, tgt in zip(output, targets, strict=True)]
            results = await Call.for_batch(self, items, self._settings(output))
            values = [_as_feedback(result) for result in results]
            return _batch_feedback(output, values)
        args, kwargs = _arguments(output, target)
        value = _as_feedback(await Call.single(self, args, kwargs, self._settings([output])))
        value.targets = _targets([output], [value.payload], [value.score])
        return value

    def _settings(self, outputs: Sequence[Any]) -> dict[str, Any]:
        """Run on the loss's own resources (bound or from ExecutionSettings), else the forward's."""
        own = resolve_settings(None, self._bound_settings, self._bound_resources).resources
        if own is None:
            for output in outputs:
                record = output.record if isinstance(output, Value) else None
                if record is not None and record.resources is not None:
                    return {"resources": record.resources}
        return {}


class VerifierLoss(Loss):
    """Feedback from code: ``check(output, target)`` returns None on a pass, else what is wrong.

    Scores are 1.0 for a pass and 0.0 for a failure; ``check`` may be async.
    """

    def __init__(self, check: Check) -> None:
        super().__init__()
        if not callable(check):
            raise ConfigError(f"VerifierLoss needs a callable check, got {check!r}")
        self.check = check

    async def forward(self, output: Any, target: Any = None) -> Feedback:
        verdict = self.check(output, target)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is None:
            return feedback("", 1.0)
        if not isinstance(verdict, str):
            raise TypeError(
                f"VerifierLoss check must return None or a feedback str, got {type(verdict)!r}"
            )
        return feedback(verdict, 0.0)


class _Verdict(Module):
    """The last node of an LLM loss: builds the feedback, routes it to the judged output."""

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        return BackwardResult(inputs={0: feedback})


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


class RubricGrade(BaseModel):
    """One criterion's grade, as the rubric judge returns it."""

    criterion: int = Field(description="the criterion's number from the list")
    score: int = Field(description="0 (fails the criterion) to 10 (fully meets it)")
    feedback: str = Field(description="what falls short and how to fix it; empty if nothing")


class RubricGrades(BaseModel):
    """The rubric judge's structured reply."""

    grades: list[RubricGrade]


class LLMRubricLoss(Loss):
    """Scored criteria with weights, graded by an LLM through structured output.

    ``criteria`` maps each criterion to its weight (or is a list, equally
    weighted). The score is the weighted mean of the grades over the criteria
    the judge graded; the feedback lists the shortfalls, heaviest first.
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

    def forward(self, output: Any, reply: Any) -> Feedback:
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
        return feedback("\n".join(line for _, line in shortfalls), score, grades=marks)


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


class CompositeLoss(Loss):
    """A weighted combination of losses that judge the same output.

    ``losses`` is a list of ``(loss, weight)`` pairs or a mapping of name to
    such a pair. The score is the weighted mean of the scores given; the
    feedback joins each loss's feedback, labelled with its name and weight
    (a weight of 0 keeps a loss for its score display only).
    """

    def __init__(
        self, losses: Sequence[tuple[Loss, float]] | Mapping[str, tuple[Loss, float]]
    ) -> None:
        super().__init__()
        named = (
            list(losses.items())
            if isinstance(losses, Mapping)
            else [(f"loss{index}", pair) for index, pair in enumerate(losses)]
        )
        if not named:
            raise ConfigError("CompositeLoss needs at least one (loss, weight) pair")
        weights: list[tuple[str, float]] = []
        for name, pair in named:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], Loss)):
                raise ConfigError(f"CompositeLoss entry {name!r} must be a (Loss, weight) pair")
            loss, weight = pair
            if isinstance(loss, LLMPreferenceLoss):
                raise ConfigError(
                    "CompositeLoss combines losses that judge one output; LLMPreferenceLoss "
                    "compares several, so use it on its own"
                )
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
                raise ConfigError(f"CompositeLoss weight for {name!r} must be a number >= 0")
            self.register_module(name, loss)
            weights.append((name, float(weight)))
        self._combine = _Combine(tuple(weights))

    def forward(self, output: Any, target: Any = None) -> Any:
        names = [name for name, _ in self._combine.weights]
        modules = dict(self.named_children())
        extra = () if target is None else (target,)
        return self._combine(*(modules[name](output, *extra) for name in names))


class _Combine(Module):
    def __init__(self, weights: tuple[tuple[str, float], ...]) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, *parts: Feedback) -> Feedback:
        weighted = total = 0.0
        for (_, weight), part in zip(self.weights, parts, strict=True):
            score = part.score
            if score is not None and weight > 0:
                weighted += weight * score
                total += weight
        texts = [text for text in self._labelled(parts).values() if text]
        parts_by_name = {name: part for (name, _), part in zip(self.weights, parts, strict=True)}
        score = weighted / total if total else None
        return feedback("\n\n".join(texts), score, parts=parts_by_name)

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        parts = [ctx.inputs[index] for index in range(len(self.weights))]
        return BackwardResult(inputs=dict(self._labelled(parts)))

    def _labelled(self, parts: Sequence[Any]) -> dict[int | str, str]:
        labelled: dict[int | str, str] = {}
        for index, ((name, weight), part) in enumerate(zip(self.weights, parts, strict=True)):
            text = to_text(part).strip()
            if text and weight > 0:
                labelled[index] = f"[{name}, weight {weight:g}] {text}"
        return labelled


def _as_model(reply: Any, model: type[Any]) -> Any:
    """A judge's structured reply as ``model``, whatever form the engine handed over."""
    payload = reply.payload if isinstance(reply, Value) else reply
    if isinstance(payload, model):
        return payload
    if isinstance(payload, str):
        return model.model_validate_json(payload)
    return model.model_validate(payload)


def _is_batch(output: Any) -> bool:
    return isinstance(output, list) and bool(output) and all(isinstance(o, Value) for o in output)


def _batch_targets(target: Any, count: int) -> list[Any]:
    if target is None:
        return [None] * count
    if not isinstance(target, list | tuple) or len(target) != count:
        raise ConfigError(
            f"a batch of {count} outputs needs a list of {count} targets (or None), got "
            f"{type(target).__name__}"
            + (f" of length {len(target)}" if isinstance(target, list | tuple) else "")
        )
    return list(target)


def _arguments(output: Any, target: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if target is None:
        return (unwrap(output),), {}
    return (unwrap(output), unwrap(target)), {}


def _as_feedback(result: Any) -> Feedback:
    """The loss graph's output as a fresh Feedback, without the record of the loss's own run."""
    if not isinstance(result, Value):
        return feedback(to_text(result))
    made = text_feedback(
        to_text(result.payload),
        result.score if isinstance(result, Feedback) else None,
        **result.meta,
    )
    if isinstance(result, Feedback):
        made.items = result.items
    return made


def _targets(
    outputs: Sequence[Any], texts: Sequence[str], scores: Sequence[float | None]
) -> tuple[FeedbackTarget, ...]:
    return tuple(
        FeedbackTarget(output.record, text, score)
        for output, text, score in zip(outputs, texts, scores, strict=True)
        if isinstance(output, Value) and output.record is not None
    )


def _batch_feedback(outputs: list[Value], values: list[Feedback]) -> Feedback:
    scores = [value.score for value in values if value.score is not None]
    texts = [f"Example {index}: {value}" for index, value in enumerate(values, 1) if str(value)]
    batch = text_feedback(
        "\n\n".join(texts),
        fmean(scores) if scores else None,
        _targets(outputs, [str(value) for value in values], [value.score for value in values]),
    )
    batch.items = tuple(values)
    return batch
