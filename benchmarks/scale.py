"""CPU per call stays flat with batch size: 100,000 streamed inputs against 1,000.

Over real HTTP against the simulator in its own process, so the CPU measured
(this process's, ``time.process_time``) is plait's and the HTTP client's. A
per-input cost that grew with the number of inputs seen (a list scanned, a
dict never pruned) shows up as a ratio above 1.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks._rounds import ROUNDS
from benchmarks.pipelines import single_call
from plait import ExecutionSettings
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


def cpu_per_call(base_url: str, count: int, concurrency: int) -> float:
    """Microseconds of process CPU per call for ``count`` streamed inputs."""
    config = {"sim": {"model": "sim", "base_url": base_url, "max_concurrent": concurrency}}
    module = single_call()

    async def source() -> AsyncIterator[str]:
        for index in range(count):
            yield f"question {index}"

    async def go() -> tuple[float, int]:
        seen = 0
        async with ResourceManager(ResourceConfig(config)) as manager:
            start = time.process_time()
            async with ExecutionSettings(
                resources=manager, streaming=True, max_concurrent=concurrency * 2
            ):
                async for result in module.batch(source()):
                    seen += result.ok
            spent = time.process_time() - start
        return spent, seen

    spent, seen = asyncio.run(go())
    if seen != count:
        raise RuntimeError(f"{seen} of {count} inputs succeeded")
    return spent / count * 1e6


def flat_with_size(
    large: int = 100_000, small: int = 1_000, concurrency: int = 200
) -> dict[str, Any]:
    with Simulator.spawn(latency=0.05) as sim:
        cpu_per_call(sim.base_url, small, concurrency)  # imports and first connections
        at_small = statistics.median(
            cpu_per_call(sim.base_url, small, concurrency) for _ in range(ROUNDS)
        )
        at_large = statistics.median(
            cpu_per_call(sim.base_url, large, concurrency) for _ in range(ROUNDS)
        )
    ratio = at_large / at_small
    return {
        "figure": f"streaming {large:,} inputs at latency 0.05 s, concurrency {concurrency}: "
        f"CPU per call at {large:,} / at {small:,}",
        "value": ratio,
        "unit": "ratio",
        "target": "<= 1.1",
        "met": ratio <= 1.1,
        "detail": {"us_per_call_large": at_large, "us_per_call_small": at_small},
    }


def run() -> list[dict[str, Any]]:
    return [flat_with_size()]


if __name__ == "__main__":
    for row in run():
        print(row)
