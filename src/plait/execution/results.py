"""What a batch produces per input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class BatchResult:
    """The outcome of one input of a batch: its output, or the error that sank it."""

    index: int
    input: Any
    output: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
