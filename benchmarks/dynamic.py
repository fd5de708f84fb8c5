"""Figures for dynamic modules (``async def forward``) and depth-first ordering.

The per-call CPU figure uses the same null resource manager and harness as
the per-node figure in :mod:`benchmarks.overhead`; the other two run over
real HTTP against the simulator, like :mod:`benchmarks.throughput`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks._rounds import ROUNDS, median_row
from benchmarks.overhead import cpu_per_node
from benchmarks.throughput import CONCURRENCY, _efficiency_row, plait_batch
from plait import ExecutionSettings, LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class DynamicSingle(Module):
    """One awaited call inside an ``async def forward``: a dynamic node per input."""

    def __init__(self, alias: str = "sim") -> None:
        super().__init__()
        self.llm = LLMInference(alias, temperature=None)

    async def forward(self, text: str) -> Any:
        return await self.llm(text)


class DynamicFour(Module):
    """Four awaited calls in sequence inside one dynamic forward."""

    def __init__(self, alias: str = "sim") -> None:
        super().__init__()
        self.llm = LLMInference(alias, temperature=None)

    async def forward(self, text: str) -> Any:
        for _ in range(4):
            text = await self.llm(text)
        return text


class TwoStage(Module):
    """A draft, then a revision of it: the second call needs the first's reply."""

    def __init__(self, alias: str = "sim") -> None:
        super().__init__()
        self.draft = LLMInference(alias, temperature=None)
        self.revise = LLMInference(alias, temperature=None)

    def forward(self, text: str) -> Any:
        return self.revise(f"Revise: {self.draft(f'Draft: {text}')}")


def time_to_first_result(
    count: int = 1_000, concurrency: int = 50, latency: float = 0.1
) -> dict[str, Any]:
    """Seconds until a streamed two-stage batch yields its first result."""
    with Simulator.spawn(latency=latency) as sim:
        manager = ResourceManager(
            ResourceConfig(
                {"sim": {"model": "sim", "base_url": sim.base_url, "max_concurrent": concurrency}}
            )
        )
        module = TwoStage()

        async def go() -> tuple[float, float]:
            start = time.perf_counter()
            first = 0.0
            seen = 0
            try:
                async with ExecutionSettings(resources=manager, streaming=True):
                    async for result in module.batch([f"q{i}" for i in range(count)]):
                        if not result.ok:
                            raise RuntimeError(f"input {result.index} failed: {result.error}")
                        seen += 1
                        if seen == 1:
                            first = time.perf_counter() - start
            finally:
                await manager.aclose()
            if seen != count:
                raise RuntimeError(f"streamed {seen} results for {count} inputs")
            return first, time.perf_counter() - start

        first, total = asyncio.run(go())
    one_input = 2 * latency
    return {
        "figure": f"time to first result, {count:,}-input two-stage batch, concurrency "
        f"{concurrency}, latency {latency} s: first result / one input's latency",
        "value": first / one_input,
        "unit": "ratio",
        "target": "<= 3",
        "met": first <= 3 * one_input,
        "detail": {"first_seconds": first, "total_seconds": total},
    }


def dynamic_flat_efficiency(latency: float = 0.5, count: int = 2_000) -> dict[str, Any]:
    with Simulator.spawn(latency=latency) as sim:
        elapsed = plait_batch(DynamicSingle(), sim.base_url, count)
        stats = sim.stats()
    figure = (
        f"dynamic flat batch, {count:,} inputs x one awaited call, concurrency "
        f"{CONCURRENCY}, latency {latency} s: ideal / actual"
    )
    row = _efficiency_row(figure, count, latency, elapsed, stats.peak_concurrency, 0.95)
    row.pop("_peak")
    return row


def run() -> list[dict[str, Any]]:
    per_call = statistics.median(cpu_per_node(DynamicFour(), 2_500, 4) for _ in range(ROUNDS))
    return [
        {
            "figure": "framework CPU per call inside a dynamic forward, 2,500 inputs x 4 "
            "awaited calls (null client)",
            "value": per_call,
            "unit": "us",
            "target": "<= 50",
            "met": per_call <= 50,
        },
        median_row(dynamic_flat_efficiency),
        median_row(time_to_first_result),
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
