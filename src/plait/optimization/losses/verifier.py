"""VerifierLoss: feedback written by code, for outputs a program can check."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from plait.errors import ConfigError, LossCheckError
from plait.feedback import Feedback
from plait.optimization.losses.base import Loss, feedback

Check = Callable[[Any, Any], str | Awaitable[str | None] | None]


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
            raise LossCheckError(
                f"VerifierLoss check must return None or a feedback str, got {type(verdict)!r}"
            )
        return feedback(verdict, 0.0)
