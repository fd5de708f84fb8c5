"""Framework overhead with no network: CPU per node, and memory while streaming.

An in-process null resource manager answers every call at once, so all CPU
measured is plait's own: tracing, scheduling, state bookkeeping and result
delivery.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from benchmarks._rounds import ROUNDS
from benchmarks.pipelines import FanOutFanIn, Wide, single_call
from plait import ExecutionSettings, Module
from plait.clients.base import ChatRequest, ChatResponse

_REPLY = ChatResponse(content="ok", model="null", input_tokens=1, output_tokens=1)


class NullResources:
    """Answers every request immediately; stands in for the ResourceManager."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, alias: str, request: ChatRequest, *, attempt: int = 0) -> ChatResponse:
        self.calls += 1
        return _REPLY

    def check_aliases(self, aliases: Iterable[str]) -> None:
        return None

    def retry_limit(self, alias: str) -> int | None:
        return None


def cpu_per_node(module: Module, inputs: int, nodes_per_input: int) -> float:
    """Microseconds of process CPU per LLM node for one batch, trace included."""
    null = NullResources()
    module.bind(resources=null, max_concurrent=100)

    async def go() -> float:
        start = time.process_time()
        await module([f"input {index}" for index in range(inputs)])
        return time.process_time() - start

    spent = asyncio.run(go())
    if null.calls != inputs * nodes_per_input:
        raise RuntimeError(f"expected {inputs * nodes_per_input} calls, saw {null.calls}")
    return spent / (inputs * nodes_per_input) * 1e6


def cpu_per_node_by_width(widths: tuple[int, ...] = (1, 50, 200, 1_000)) -> dict[int, float]:
    """CPU per node for ``width`` parallel calls + a join, about 10,000 nodes per batch.

    Median of three batches per width, so one noisy batch neither hides nor
    fakes growth with width.
    """
    found = {}
    for width in widths:
        inputs = max(1, 10_000 // (width + 1))
        found[width] = statistics.median(
            cpu_per_node(Wide(width), inputs, width + 1) for _ in range(ROUNDS)
        )
    return found


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def streaming_rss_growth(count: int, max_inflight: int) -> dict[str, Any]:
    """Peak RSS growth (MiB) while streaming ``count`` generated inputs."""
    module = single_call()
    null = NullResources()
    peak = 0.0

    async def source() -> AsyncIterator[str]:
        for index in range(count):
            yield f"input {index}"

    async def go() -> int:
        nonlocal peak
        seen = 0
        async with ExecutionSettings(resources=null, streaming=True, max_inflight=max_inflight):
            async for result in module.batch(source()):
                seen += result.ok
                if seen % 5000 == 0:
                    peak = max(peak, _rss_mib())
        return seen

    gc.collect()
    before = _rss_mib()
    peak = before
    start = time.perf_counter()
    seen = asyncio.run(go())
    elapsed = time.perf_counter() - start
    peak = max(peak, _rss_mib())
    return {"inputs": seen, "growth_mib": peak - before, "seconds": elapsed}


def run() -> list[dict[str, Any]]:
    single = statistics.median(cpu_per_node(single_call(), 10_000, 1) for _ in range(ROUNDS))
    fan = statistics.median(cpu_per_node(FanOutFanIn(), 2_500, 4) for _ in range(ROUNDS))
    wide = cpu_per_node_by_width()
    stream = streaming_rss_growth(100_000, 256)
    return [
        {
            "figure": "framework CPU per LLM node, 10,000 single-call inputs (null client)",
            "value": single,
            "unit": "us",
            "target": "<= 50",
            "met": single <= 50,
        },
        {
            "figure": "framework CPU per LLM node, 2,500 x fan-out/fan-in = 10,000 nodes",
            "value": fan,
            "unit": "us",
            "target": "<= 50",
            "met": fan <= 50,
        },
        {
            "figure": "framework CPU per LLM node, W parallel calls + a join, worst of "
            "W = " + ", ".join(f"{width:,}" for width in wide),
            "value": max(wide.values()),
            "unit": "us",
            "target": "<= 30 at every W",
            "met": max(wide.values()) <= 30,
            "detail": {f"us_per_node_at_{width}": value for width, value in wide.items()},
        },
        {
            "figure": "streaming 100,000 inputs, max_inflight=256: peak RSS growth",
            "value": stream["growth_mib"],
            "unit": "MiB",
            "target": "<= 64",
            "met": stream["growth_mib"] <= 64 and stream["inputs"] == 100_000,
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
