"""A checkpointed batch job: stopped halfway, then resumed without paying twice.

The first run stops itself after 15 of 40 inputs (as a crash would). The second
run, same module, same inputs, same ``checkpoint_dir``, sends requests only for
the inputs that had not finished. The simulator counts what it was asked, so
the saving is visible. ``plait run ... --checkpoint-dir`` does the same from
the command line.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from plait import ExecutionSettings, LLMInference, Module
from plait.execution import CheckpointManager
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator

INPUTS = [f"invoice {index}" for index in range(40)]


class Extract(Module):
    def __init__(self) -> None:
        super().__init__()
        self.fields = LLMInference("fast", temperature=0)
        self.check = LLMInference("fast", temperature=0)

    def forward(self, document: str) -> Any:
        return self.check(f"Check these fields: {self.fields(f'Extract fields from {document}')}")


class Crash(Exception):
    """Stands in for the machine going away mid-run."""


def stop_after(count: int) -> Any:
    def on_progress(done: int, total: int | None) -> None:
        if done >= count:
            raise Crash(f"stopped after {done} of {total} inputs")

    return on_progress


async def main() -> None:
    with tempfile.TemporaryDirectory() as checkpoints:
        async with Simulator(latency=0.02) as sim:
            resources = ResourceManager(
                ResourceConfig({"fast": {"model": "demo", "base_url": sim.base_url}})
            )
            job = Extract().bind(resources)
            try:
                async with ExecutionSettings(checkpoint_dir=checkpoints, max_concurrent=8):
                    try:
                        await job.batch(INPUTS, on_progress=stop_after(15))
                    except Crash as crash:
                        print(f"first run: {crash}; requests so far: {sim.stats().requests}")
                    before = sim.stats().requests
                    outputs = await job(INPUTS)
                    resumed = sim.stats().requests - before
            finally:
                await resources.aclose()
        print(f"second run: {len(outputs)} outputs, {resumed} requests (a fresh run needs 80)")
        for run in CheckpointManager(checkpoints).runs():
            print(f"stored run {run.run_id}: {run.module}, status {run.status}")


if __name__ == "__main__":
    asyncio.run(main())
