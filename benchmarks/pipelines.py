"""The pipelines the benchmarks run."""

from __future__ import annotations

from typing import Any

from plait import LLMInference, Module


class FanOutFanIn(Module):
    """Three independent calls on the input, then one call that joins them."""

    def __init__(self, alias: str = "sim") -> None:
        super().__init__()
        self.facts = LLMInference(alias, temperature=None)
        self.risks = LLMInference(alias, temperature=None)
        self.tone = LLMInference(alias, temperature=None)
        self.join = LLMInference(alias, temperature=None)

    def forward(self, text: str) -> Any:
        facts = self.facts(f"Facts in: {text}")
        risks = self.risks(f"Risks in: {text}")
        tone = self.tone(f"Tone of: {text}")
        return self.join(f"Combine:\n{facts}\n{risks}\n{tone}")


def single_call(alias: str = "sim") -> LLMInference:
    return LLMInference(alias, temperature=None)


class Wide(Module):
    """``width`` independent calls on the input, then one call that joins them all."""

    def __init__(self, width: int, alias: str = "sim") -> None:
        super().__init__()
        self.width = width
        self.branch = LLMInference(alias, temperature=None)
        self.join = LLMInference(alias, temperature=None)

    def forward(self, text: str) -> Any:
        parts = [self.branch(f"Part {index} of: {text}") for index in range(self.width)]
        return self.join("\n".join(f"{part}" for part in parts))
