"""Retry with a fallback model: a failure of the primary is caught inside forward.

The primary endpoint fails every prompt that mentions "legal"; the module
catches the error (after the primary's own retries) and asks the fallback
model instead. Other inputs never touch the fallback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from plait import LLMInference, Module
from plait.errors import PlaitError
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class WithFallback(Module):
    def __init__(self) -> None:
        super().__init__()
        self.primary = LLMInference("primary")
        self.fallback = LLMInference("fallback")

    async def forward(self, prompt: str) -> str:
        try:
            return await self.primary(prompt)
        except PlaitError as error:
            reply = await self.fallback(prompt)
            return f"{reply} (fallback after {type(error).__name__})"


def refuse_legal(seq: int, body: dict[str, Any]) -> str | None:
    on_primary = body.get("model") == "primary-model"
    return "503" if on_primary and "legal" in str(body["messages"][-1]["content"]) else None


async def main() -> None:
    async with Simulator(latency=0.02, fault=refuse_legal) as sim:
        url = sim.base_url
        resources = ResourceManager(
            ResourceConfig(
                {
                    "primary": {"model": "primary-model", "base_url": url},
                    "fallback": {"model": "fallback-model", "base_url": url},
                }
            )
        )
        try:
            module = WithFallback().bind(resources=resources, max_task_retries=1)
            for answer in await module(["a recipe", "a legal question", "a poem"]):
                print(answer)
            print(f"models used: {dict(sorted(sim.stats().models.items()))}")
        finally:
            await resources.aclose()


if __name__ == "__main__":
    asyncio.run(main())
