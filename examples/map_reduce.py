"""Map-reduce over a number of chunks known only at run time.

Each document is split into however many chunks its length needs; ``F.map``
summarises them concurrently (under the endpoint's limit of four requests
at once), then one call combines the summaries. Documents of one to five chunks run in one batch.
"""

from __future__ import annotations

import asyncio

import plait.functional as F
from plait import LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator

CHUNK = 40


class MapReduce(Module):
    def __init__(self) -> None:
        super().__init__()
        self.summarise = LLMInference("fast", system_prompt="Summarise in one line.")
        self.combine = LLMInference("fast", system_prompt="Combine into one summary.")

    async def forward(self, document: str) -> str:
        chunks = [document[i : i + CHUNK] for i in range(0, len(document), CHUNK)]
        notes = await F.map(self.summarise, chunks)
        return await self.combine("\n".join(notes))


async def main() -> None:
    documents = [" ".join(["word"] * (8 * size)) for size in range(1, 6)]
    async with Simulator(latency=0.05) as sim:
        endpoint = {"model": "demo", "base_url": sim.base_url, "max_concurrent": 4}
        resources = ResourceManager(ResourceConfig({"fast": endpoint}))
        try:
            outputs = await MapReduce().bind(resources=resources)(documents)
            for document, output in zip(documents, outputs, strict=True):
                chunks = -(-len(document) // CHUNK)
                print(f"{chunks} chunks -> {output.count('ECHO: word')} notes combined")
            stats = sim.stats()
            print(f"requests: {stats.requests}, peak concurrency: {stats.peak_concurrency}")
        finally:
            await resources.aclose()


if __name__ == "__main__":
    asyncio.run(main())
