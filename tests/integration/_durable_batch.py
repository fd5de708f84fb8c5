"""A checkpointed 300-input batch, run as a child process that the durability test kills.

Usage: ``python _durable_batch.py BASE_URL [CHECKPOINT_DIR]``. It prints the
outputs as one JSON list when the batch finishes. The pipeline and settings
live here so that the test's in-process runs are exactly the same batch.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from plait import LLMInference, Module
from plait.resources import ResourceManager

INPUTS = [f"item {index}" for index in range(300)]
CALLS_PER_INPUT = 2
MAX_CONCURRENT = 8
BUFFER_SIZE = 2


class TwoStep(Module):
    """Two calls in series, so a kill can leave inputs half done."""

    def __init__(self, system_prompt: str = "Be brief.") -> None:
        super().__init__()
        self.draft = LLMInference("sim", system_prompt=system_prompt, temperature=0.0)
        self.polish = LLMInference("sim", temperature=0.0)

    def forward(self, text: str) -> Any:
        return self.polish(f"Polish: {self.draft(text)}")


async def run_batch(
    base_url: str, checkpoint_dir: str | None, *, system_prompt: str = "Be brief."
) -> list[Any]:
    resources = ResourceManager(
        {
            "sim": {
                "model": "sim-model",
                "base_url": base_url,
                "api_key": "sk-durable-test",
                "max_concurrent": MAX_CONCURRENT,
            }
        }
    )
    settings: dict[str, Any] = {"max_concurrent": MAX_CONCURRENT}
    if checkpoint_dir is not None:
        settings.update(
            checkpoint_dir=checkpoint_dir,
            checkpoint_buffer_size=BUFFER_SIZE,
            checkpoint_flush_interval=0.02,
        )
    try:
        module = TwoStep(system_prompt).bind(resources=resources)
        outputs: list[Any] = await module.batch(INPUTS, **settings)
        return outputs
    finally:
        await resources.aclose()


if __name__ == "__main__":
    directory = sys.argv[2] if len(sys.argv) > 2 else None
    print(json.dumps(asyncio.run(run_batch(sys.argv[1], directory))), flush=True)
