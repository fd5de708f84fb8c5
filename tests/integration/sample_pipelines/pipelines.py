"""Modules the CLI tests load by ``package.module:factory``."""

from __future__ import annotations

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
