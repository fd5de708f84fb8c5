"""Whole-process figures: a fresh interpreter per run, imports and first calls included.

Each side runs as its own ``python -c`` child against the same simulator, so
what is compared is what a user's script costs end to end: interpreter start,
imports, building the client (or the pipeline) and the calls. Runs of the two
sides alternate, and each figure is the ratio of their medians.

Both sides import compiled bytecode, as they would after ``pip install``
(which compiles what it installs). Without that step this machine would
measure the compiler instead: uv installs without compiling, and the
environment sets ``PYTHONDONTWRITEBYTECODE``, so every child would compile
every module it imports from source, each time (0.4-0.6 s for ``import
aiohttp`` alone, against 0.3 s from bytecode).
"""

from __future__ import annotations

import compileall
import resource
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from benchmarks._rounds import ROUNDS
from benchmarks.throughput import CONCURRENCY
from plait.testing import Simulator

ROOT = Path(__file__).resolve().parent.parent

_PLAIT = """
import asyncio, sys
from plait import LLMInference
from plait.resources import ResourceConfig, ResourceManager
url, count, shape, concurrency = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if shape == "fan":
    from benchmarks.pipelines import FanOutFanIn
    module = FanOutFanIn()
else:
    module = LLMInference("sim", temperature=None)
config = {"sim": {"model": "sim", "base_url": url, "max_concurrent": concurrency}}

async def main():
    async with ResourceManager(ResourceConfig(config)) as manager:
        module.bind(resources=manager, max_concurrent=concurrency * 4)
        prompts = [f"question {i}" for i in range(count)]
        outputs = await module(prompts)
    assert len(outputs) == count

asyncio.run(main())
"""

_BASELINE = """
import asyncio, json, sys
import aiohttp
url, count, shape = sys.argv[1] + "/chat/completions", int(sys.argv[2]), sys.argv[3]
concurrency = int(sys.argv[4])

async def main():
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Content-Type": "application/json"}
    ) as session:
        async def one(prompt):
            body = json.dumps({"model": "sim", "messages": [{"role": "user", "content": prompt}]})
            async with limit, session.post(url, data=body.encode()) as response:
                reply = json.loads(await response.read())
            return reply["choices"][0]["message"]["content"]

        async def fan(text):
            parts = await asyncio.gather(
                one(f"Facts in: {text}"), one(f"Risks in: {text}"), one(f"Tone of: {text}")
            )
            return await one("Combine:\\n" + "\\n".join(parts))

        work = fan if shape == "fan" else one
        outputs = await asyncio.gather(*(work(f"question {i}") for i in range(count)))
    assert len(outputs) == count

asyncio.run(main())
"""


def _child(code: str, base_url: str, count: int, shape: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    argv = [sys.executable, "-c", code, base_url, str(count), shape, str(CONCURRENCY)]
    subprocess.run(argv, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _alternate(
    base_url: str, count: int, shape: str, rounds: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    plait_runs, base_runs = [], []
    for _ in range(rounds):
        base_runs.append(_child(_BASELINE, base_url, count, shape))
        plait_runs.append(_child(_PLAIT, base_url, count, shape))
    return plait_runs, base_runs


def cold_start(rounds: int = ROUNDS) -> dict[str, Any]:
    """CPU of import + pipeline + first call, against import aiohttp + session + request."""
    with Simulator.spawn() as sim:
        plait_runs, base_runs = _alternate(sim.base_url, 1, "flat", rounds)
    plait_cpu = statistics.median(cpu for _, cpu in plait_runs)
    base_cpu = statistics.median(cpu for _, cpu in base_runs)
    ratio = plait_cpu / base_cpu
    return {
        "figure": "cold start: process CPU of import plait + pipeline + first call / import "
        "aiohttp + session + first request",
        "value": ratio,
        "unit": "ratio",
        "target": "<= 1.2",
        "met": ratio <= 1.2,
        "detail": {"plait_cpu_seconds": plait_cpu, "baseline_cpu_seconds": base_cpu},
    }


def whole_process(
    shape: str, count: int, latency: float = 0.05, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Throughput of a fresh process doing the whole batch: plait / the baseline."""
    with Simulator.spawn(latency=latency) as sim:
        plait_runs, base_runs = _alternate(sim.base_url, count, shape, rounds)
    ratio = statistics.median(wall for wall, _ in base_runs) / statistics.median(
        wall for wall, _ in plait_runs
    )
    calls = count * (4 if shape == "fan" else 1)
    return {
        "figure": f"{shape} batch, {calls:,} calls at latency {latency} s, whole process cold "
        "(imports included): plait throughput / hand-written aiohttp + Semaphore",
        "value": ratio,
        "unit": "ratio",
        "target": ">= 1.0",
        "met": ratio >= 1.0,
        "detail": {
            "plait_seconds": [wall for wall, _ in plait_runs],
            "baseline_seconds": [wall for wall, _ in base_runs],
            "plait_cpu_seconds": [cpu for _, cpu in plait_runs],
            "baseline_cpu_seconds": [cpu for _, cpu in base_runs],
        },
    }


def compile_bytecode() -> None:
    """Compile every installed package and plait's sources (a no-op once up to date)."""
    paths = sysconfig.get_paths()
    for directory in sorted({paths["purelib"], paths["platlib"], str(ROOT / "src")}):
        compileall.compile_dir(directory, quiet=1, workers=0)


def run() -> list[dict[str, Any]]:
    compile_bytecode()
    return [cold_start(), whole_process("flat", 2_000), whole_process("fan", 500)]


if __name__ == "__main__":
    for row in run():
        print(row)
