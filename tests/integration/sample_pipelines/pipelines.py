"""Modules the CLI tests load by ``package.module:factory``."""

from __future__ import annotations

import os
from typing import Any

from plait import LLMInference, Module


class Rewrite(Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = LLMInference("fast")
        self.polish = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.polish(f"Polish: {self.draft(text)}")


def build() -> Rewrite:
    return Rewrite()


def single() -> LLMInference:
    return LLMInference("fast")


class Refuse(Module):
    """Fails on the input "boom", to show per-row errors."""

    def forward(self, text: str) -> str:
        if text == "boom":
            raise ValueError("refusing to process 'boom'")
        return text


class Guarded(Module):
    def __init__(self) -> None:
        super().__init__()
        self.check = Refuse()
        self.answer = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.answer(self.check(text))


def guarded() -> Guarded:
    return Guarded()


NOT_A_MODULE = 42


class FailNamed(Module):
    """Fails the inputs named in ``$PLAIT_TEST_FAIL`` (comma separated), upper-cases the rest:
    a rerun with a different environment shows whether failed lines are retried."""

    def forward(self, text: str) -> str:
        if text in os.environ.get("PLAIT_TEST_FAIL", "").split(","):
            raise ValueError(f"told to fail {text!r}")
        return text.upper()


def fail_named() -> FailNamed:
    return FailNamed()


def exploding() -> Module:
    raise RuntimeError("the factory could not build its pipeline")
