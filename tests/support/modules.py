"""Small pipelines the engine tests run: overlap, chains and fan-outs of LLM calls."""

from __future__ import annotations

from typing import Any

from plait.inference import LLMInference
from plait.module import Module


class Upper(Module):
    """A child-less custom module: its forward runs at execution on real text."""

    def forward(self, text: str) -> str:
        return text.upper()


class FanOut(Module):
    """``width`` independent LLM calls on the input, then one call joining them."""

    def __init__(self, width: int = 3, alias: str = "fast") -> None:
        super().__init__()
        self.width = width
        for index in range(width):
            setattr(self, f"branch{index}", LLMInference(alias))
        self.join = LLMInference(alias)

    def forward(self, text: str) -> Any:
        parts = [getattr(self, f"branch{index}")(f"b{index}:{text}") for index in range(self.width)]
        return self.join(" | ".join(parts))


class Chain(Module):
    """Two LLM calls in series, the second prompted with the first's reply."""

    def __init__(self, alias: str = "fast") -> None:
        super().__init__()
        self.first = LLMInference(alias)
        self.second = LLMInference(alias)

    def forward(self, text: str) -> Any:
        return self.second(f"then:{self.first(text)}")


class TwoBranches(Module):
    """Two independent chains of two calls each; returns both results as a tuple."""

    def __init__(self, alias: str = "fast") -> None:
        super().__init__()
        self.left = Chain(alias)
        self.right = Chain(alias)

    def forward(self, text: str) -> Any:
        return self.left(f"L:{text}"), self.right(f"R:{text}")
