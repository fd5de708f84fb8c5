"""Learnable text: the prompts an optimizer may rewrite.

A Parameter is read at execution time, not when the graph is traced, so an
optimizer step changes what the next run sends without retracing anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from plait.errors import ConfigError, TracingError
from plait.tracing.context import current_tracer


class Parameter:
    """A piece of text a module uses and an optimizer may improve.

    ``description`` tells the optimizer what the text is for; without it an LLM
    cannot rewrite the text sensibly, so it is required for learnable values.
    """

    _plait_parameter = True

    def __init__(
        self, value: str, description: str | None = None, requires_grad: bool = True
    ) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"Parameter value must be a str, got {type(value).__name__}")
        if requires_grad and not (description and description.strip()):
            raise ConfigError(
                "a learnable Parameter needs a description saying what the text is for "
                "(the optimizer reads it to rewrite the value); pass description=... or "
                "requires_grad=False"
            )
        self.value = value
        self.description = description
        self.requires_grad = requires_grad
        self._feedback: list[str] = []
        self._scores: list[float] = []
        self._upstream: dict[int, Parameter] = {}

    @property
    def feedback(self) -> tuple[str, ...]:
        """Feedback accumulated since the last ``zero_feedback``, oldest first."""
        return tuple(self._feedback)

    @property
    def scores(self) -> tuple[float, ...]:
        """Scores of the judged outputs this value helped produce since ``zero_feedback``.

        The optimizer files their mean as the score of the current value, so it
        can tell a rewrite that helped from one that did not.
        """
        return tuple(self._scores)

    @property
    def upstream(self) -> tuple[Parameter, ...]:
        """Parameters used earlier in the pipeline than where this one's feedback arose.

        The optimizer rewrites those first, so this one's rewrite can take
        their new values into account.
        """
        return tuple(self._upstream.values())

    def accumulate_feedback(self, text: str, *, upstream: Iterable[Parameter] = ()) -> None:
        """Add one piece of feedback; ``upstream`` names Parameters that fed the
        step this feedback was written for (the backward pass fills it in)."""
        if text:
            self._feedback.append(str(text))
            for param in upstream:
                if param is not self:
                    self._upstream[id(param)] = param

    def record_score(self, score: float) -> None:
        """Note the score of an output this value helped produce."""
        self._scores.append(float(score))

    def zero_feedback(self) -> None:
        """Forget accumulated feedback, scores and upstream links (an optimizer step used them)."""
        self._feedback.clear()
        self._scores.clear()
        self._upstream.clear()

    def apply_update(self, value: str) -> None:
        """Replace the value; frozen parameters refuse, so a bug cannot rewrite them."""
        if not self.requires_grad:
            raise ConfigError("cannot update a Parameter with requires_grad=False")
        if not isinstance(value, str):
            raise ConfigError(f"Parameter value must be a str, got {type(value).__name__}")
        self.value = value

    def __str__(self) -> str:
        tracer = current_tracer()
        if tracer is not None:
            return tracer.param_token(self)
        return self.value

    def __format__(self, spec: str) -> str:
        if spec and current_tracer() is not None:
            raise TracingError(
                f"a format spec ({spec!r}) on a Parameter inside a traced forward would "
                "apply to a placeholder, not to the value read at run time; use {param} "
                "without a spec, or format the value in a Module without child modules"
            )
        return format(str(self), spec)

    def __add__(self, other: Any) -> str:
        if not isinstance(other, str):
            return NotImplemented
        return str(self) + other

    def __radd__(self, other: Any) -> str:
        if not isinstance(other, str):
            return NotImplemented
        return other + str(self)

    def __repr__(self) -> str:
        shown = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return (
            f"Parameter({shown!r}, description={self.description!r}, "
            f"requires_grad={self.requires_grad})"
        )
