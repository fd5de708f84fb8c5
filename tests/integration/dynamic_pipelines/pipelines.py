"""A dynamic pipeline the CLI tests load by ``package.module:factory``."""

from __future__ import annotations

from typing import Any

from plait import LLMInference, Module


class Grow(Module):
    """Dynamic: calls the model until the reply is long enough."""

    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    async def forward(self, text: str) -> str:
        out = await self.llm(text)
        while len(out) < 20:
            out = await self.llm(out)
        return out


class Wrapped(Module):
    """Traced around the dynamic ``Grow``."""

    def __init__(self) -> None:
        super().__init__()
        self.grow = Grow()
        self.polish = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.polish(f"Polish: {self.grow(text)}")


def build() -> Wrapped:
    return Wrapped()


def build_grow() -> Grow:
    """The dynamic module alone, as the whole pipeline."""
    return Grow()
