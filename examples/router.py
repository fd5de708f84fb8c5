"""A router: classify each question, then send it to the model that suits it.

The branch taken depends on the classifier's reply, so the module is dynamic
(``async def forward``). Only the chosen branch runs: a question costs two
calls whichever way it goes, never one per branch.
"""

from __future__ import annotations

import asyncio

from plait import LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class Router(Module):
    def __init__(self) -> None:
        super().__init__()
        self.classify = LLMInference("fast", system_prompt="Answer 'math' or 'chat'.")
        self.math = LLMInference("smart", system_prompt="Solve step by step.")
        self.chat = LLMInference("fast", system_prompt="Be friendly.")

    async def forward(self, question: str) -> str:
        label = (await self.classify(question)).strip().lower()
        if label == "math":
            return "[math] " + await self.math(question)
        return "[chat] " + await self.chat(question)


RULES = [(r"Answer 'math'(?s:.*)\d", "math"), (r"Answer 'math'", "chat")]


async def main() -> None:
    async with Simulator(latency=0.05, rules=RULES) as sim:
        endpoint = {"model": "demo", "base_url": sim.base_url, "max_concurrent": 8}
        resources = ResourceManager(ResourceConfig({"fast": endpoint, "smart": endpoint}))
        questions = ["What is 12 * 7?", "How are you today?", "Is 91 prime?"]
        try:
            for answer in await Router().bind(resources=resources)(questions):
                print(answer)
            print(f"requests: {sim.stats().requests}")
        finally:
            await resources.aclose()


if __name__ == "__main__":
    asyncio.run(main())
