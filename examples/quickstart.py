"""Quick start: a two-step pipeline whose second prompt is built from the first reply.

Runs offline against plait's built-in simulator; point ``base_url`` at any
OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI) to use a real model.
"""

from __future__ import annotations

import asyncio
from typing import Any

from plait import LLMInference, Module, Parameter
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class Explain(Module):
    def __init__(self) -> None:
        super().__init__()
        self.audience = Parameter("a curious ten-year-old", description="Who the answer is for")
        self.draft = LLMInference("fast")
        self.polish = LLMInference("fast", temperature=0.2)

    def forward(self, topic: str) -> Any:
        notes = self.draft(f"List three facts about {topic}.")
        return self.polish(f"Rewrite these notes for {self.audience}:\n{notes}")


async def main() -> None:
    async with Simulator(latency=0.05) as sim:
        resources = ResourceManager(
            ResourceConfig({"fast": {"model": "demo", "base_url": sim.base_url}})
        )
        pipeline = Explain().bind(resources)
        try:
            print(await pipeline("tides"))
            for answer in await pipeline(["volcanoes", "comets"]):
                print(answer)
        finally:
            await resources.aclose()


if __name__ == "__main__":
    asyncio.run(main())
