"""Fan-out/fan-in: three independent analyses run concurrently, then one call joins them.

The graph is printed first (Mermaid), then a small batch runs offline against
the simulator. With 100 ms of simulated latency per call, each input takes
about two latencies (the three branches overlap), not four.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from plait import LLMInference, Module, trace
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class Review(Module):
    def __init__(self) -> None:
        super().__init__()
        self.strengths = LLMInference("fast")
        self.weaknesses = LLMInference("fast")
        self.questions = LLMInference("fast")
        self.summary = LLMInference("smart")

    def forward(self, paper: str) -> Any:
        parts = [
            self.strengths(f"Strengths of: {paper}"),
            self.weaknesses(f"Weaknesses of: {paper}"),
            self.questions(f"Open questions about: {paper}"),
        ]
        return self.summary("Write a review from these notes:\n" + "\n".join(parts))


async def main() -> None:
    print(trace(Review(), "paper").to_mermaid())
    async with Simulator(latency=0.1) as sim:
        endpoint = {"model": "demo", "base_url": sim.base_url, "max_concurrent": 16}
        resources = ResourceManager(ResourceConfig({"fast": endpoint, "smart": endpoint}))
        review = Review().bind(resources)
        try:
            start = time.perf_counter()
            reviews = await review([f"paper {index}" for index in range(4)])
            elapsed = time.perf_counter() - start
        finally:
            await resources.aclose()
    print(reviews[0])
    print(f"4 inputs x 4 calls in {elapsed:.2f} s (sequential would take {16 * 0.1:.1f} s)")


if __name__ == "__main__":
    asyncio.run(main())
