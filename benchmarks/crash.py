"""What a ``kill -9`` costs a checkpointed batch: calls paid twice per call in flight.

A child process runs the batch against the simulator (in its own process, so
its request counter outlives the child) and is killed when the server has
seen a given share of the batch's calls: timed by the server, not by what the
child has committed, so the kill lands anywhere in the commit cycle. The
rerun on the same directory finishes the batch; every call beyond the
batch's own count was paid twice. The client keeps ``CONCURRENCY`` requests
open throughout, which is what a kill can cut off; group commit must keep
the rest of the loss within one commit's worth.

``python -m benchmarks.crash BASE_URL CHECKPOINT_DIR`` is the child.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.pipelines import FanOutFanIn
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator, SpawnedSimulator

INPUTS = [f"report {index}" for index in range(200)]
CALLS = len(INPUTS) * 4
CONCURRENCY = 32
KILL_POINTS = (0.05, 0.5, 0.9)
GUARD = 120.0


async def run_batch(base_url: str, checkpoint_dir: str) -> int:
    endpoint = {"model": "sim", "base_url": base_url, "max_concurrent": CONCURRENCY}
    manager = ResourceManager(ResourceConfig({"sim": endpoint}))
    try:
        module = FanOutFanIn().bind(resources=manager)
        outputs = await module.batch(INPUTS, checkpoint_dir=checkpoint_dir)
        return len(outputs)
    finally:
        await manager.aclose()


def _kill_and_resume(sim: SpawnedSimulator, share: float, directory: Path) -> dict[str, Any]:
    sim.reset_stats()
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.crash", sim.base_url, str(directory)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    target = max(1, int(share * CALLS))
    deadline = time.monotonic() + GUARD
    try:
        while (seen := sim.stats()).requests < target:
            if child.poll() is not None:
                _, stderr = child.communicate()
                raise RuntimeError(f"the batch child exited: {stderr!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the batch child made no progress")
            time.sleep(0.002)
        child.kill()
    finally:
        child.wait(GUARD)
    finished = asyncio.run(run_batch(sim.base_url, str(directory)))
    if finished != len(INPUTS):
        raise RuntimeError(f"the resumed batch returned {finished} of {len(INPUTS)} outputs")
    re_spent = sim.stats().requests - CALLS
    return {
        "kill_at": share,
        "re_spent": re_spent,
        "in_flight": CONCURRENCY,
        "server_in_flight_before_kill": seen.in_flight,
        "ratio": re_spent / CONCURRENCY,
    }


def kill_figure() -> dict[str, Any]:
    with (
        Simulator.spawn(latency=0.1, latency_jitter=0.05) as sim,
        tempfile.TemporaryDirectory() as scratch,
    ):
        points = [
            _kill_and_resume(sim, share, Path(scratch) / f"at-{share}") for share in KILL_POINTS
        ]
    worst = max(point["ratio"] for point in points)
    return {
        "figure": f"kill -9 at {len(KILL_POINTS)} points of a checkpointed batch "
        f"({len(INPUTS)} inputs x 4 calls, concurrency {CONCURRENCY}): calls re-spent / "
        "calls in flight (worst point)",
        "value": worst,
        "unit": "ratio",
        "target": "<= 1.2",
        "met": worst <= 1.2,
        "detail": {"points": points},
    }


def run() -> list[dict[str, Any]]:
    return [kill_figure()]


if __name__ == "__main__":
    asyncio.run(run_batch(sys.argv[1], sys.argv[2]))
