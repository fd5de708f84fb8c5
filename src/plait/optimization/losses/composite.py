"""CompositeLoss: several losses judge one output; their scores mix by weight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plait.errors import ConfigError
from plait.feedback import BackwardContext, BackwardResult, Feedback
from plait.module import Module
from plait.optimization.losses.base import Loss
from plait.optimization.losses.preference import LLMPreferenceLoss
from plait.values import ValueKind, to_text


@dataclass(slots=True)
class CompositeFeedback(Feedback):
    """A composite loss's feedback, with each part loss's own feedback under its name."""

    parts: dict[str, Feedback] = field(default_factory=dict)


class CompositeLoss(Loss):
    """A weighted combination of losses that judge the same output.

    ``losses`` is a list of ``(loss, weight)`` pairs or a mapping of name to
    such a pair. The score is the weighted mean of the scores given; the
    feedback joins each loss's feedback, labelled with its name and weight
    (a weight of 0 keeps a loss for its score display only), and its
    ``parts`` keep every loss's own feedback.
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

    def forward(self, *parts: Feedback) -> CompositeFeedback:
        weighted = total = 0.0
        for (_, weight), part in zip(self.weights, parts, strict=True):
            score = part.score
            if score is not None and weight > 0:
                weighted += weight * score
                total += weight
        texts = [text for text in self._labelled(parts).values() if text]
        parts_by_name = {name: part for (name, _), part in zip(self.weights, parts, strict=True)}
        score = weighted / total if total else None
        return CompositeFeedback(
            ValueKind.TEXT, "\n\n".join(texts), score=score, parts=parts_by_name
        )

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
