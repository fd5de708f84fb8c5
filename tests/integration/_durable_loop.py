"""A checkpointed batch of refine loops, run as a child process the replay test kills.

Usage: ``python _durable_loop.py BASE_URL [CHECKPOINT_DIR]``; prints the outputs
as one JSON list when the batch finishes. Every input takes six calls in a row
(write, then judge and fix twice, then a judge that passes), so a kill always
leaves loops half done.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from plait import LLMInference, Module
from plait.resources import ResourceManager

INPUTS = [f"item {index}" for index in range(60)]
CALLS_PER_INPUT = 6
MAX_CONCURRENT = 4
RULES = [
    (r"^Judge: .*draft v3", "PASS"),
    (r"^Judge:", "FAIL"),
    (r"^Fix: .*draft v2", "draft v3"),
    (r"^Fix: .*draft v1", "draft v2"),
    (r"^Write:", "draft v1"),
]


class Refine(Module):
    def __init__(self) -> None:
        super().__init__()
        self.write = LLMInference("sim", temperature=0.0)
        self.judge = LLMInference("sim", temperature=0.0)

    async def forward(self, task: str) -> str:
        draft = await self.write(f"Write: {task}")
        for _ in range(5):
            if await self.judge(f"Judge: {task} {draft}") == "PASS":
                break
            draft = await self.write(f"Fix: {task} {draft}")
        return f"{task}: {draft}"


async def run_batch(base_url: str, checkpoint_dir: str | None) -> list[Any]:
    resources = ResourceManager(
        {"sim": {"model": "sim-model", "base_url": base_url, "max_concurrent": MAX_CONCURRENT}}
    )
    settings: dict[str, Any] = {"max_concurrent": MAX_CONCURRENT}
    if checkpoint_dir is not None:
        settings.update(checkpoint_dir=checkpoint_dir)
    try:
        outputs: list[Any] = await Refine().bind(resources=resources).batch(INPUTS, **settings)
        return outputs
    finally:
        await resources.aclose()


if __name__ == "__main__":
    directory = sys.argv[2] if len(sys.argv) > 2 else None
    print(json.dumps(asyncio.run(run_batch(sys.argv[1], directory))), flush=True)
