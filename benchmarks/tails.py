"""Heavy-tailed latency: how close a fan-out batch gets to the bound its latencies set.

The simulator draws every request's latency from a log-normal (median 0.5 s,
sigma 0.99, so p99 is about 5 s) and records the first draw for each prompt.
From those the bound is computed after the run: no schedule can finish
before the slowest input's chain (its slowest branch plus its join), nor
before all the work divided by the concurrency. Runs with and without
``hedge`` use the same seeds, so they face the same draws in order.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from typing import Any

from benchmarks.pipelines import FanOutFanIn
from benchmarks.throughput import CONCURRENCY, plait_batch
from plait.testing import Simulator

_INDEX = re.compile(r"question (\d+)")


def lower_bound(latencies: dict[str, float], concurrency: int) -> float:
    """max(critical path, work / concurrency) for FanOutFanIn prompts' first draws."""
    branches: dict[int, list[float]] = defaultdict(list)
    joins: dict[int, float] = {}
    for prompt, seconds in latencies.items():
        found = _INDEX.search(prompt)
        if found is None:
            raise RuntimeError(f"a prompt of no input: {prompt[:60]!r}")
        index = int(found.group(1))
        if prompt.startswith("Combine:"):
            joins[index] = seconds
        else:
            branches[index].append(seconds)
    critical = max(max(branches[index]) + joins[index] for index in joins)
    return max(critical, sum(latencies.values()) / concurrency)


def one_run(count: int, seed: int, hedge: bool) -> tuple[float, int]:
    """(makespan / bound, extra requests) for one seeded run."""
    with Simulator.spawn(latency=0.5, latency_sigma=0.99, record_latencies=True, seed=seed) as sim:
        elapsed = plait_batch(FanOutFanIn(), sim.base_url, count, {"hedge": hedge})
        stats = sim.stats()
    calls = count * 4
    if len(stats.latencies) != calls:
        raise RuntimeError(f"the simulator saw {len(stats.latencies)} prompts, expected {calls}")
    if stats.peak_concurrency > CONCURRENCY:
        raise RuntimeError(f"peak concurrency {stats.peak_concurrency} > {CONCURRENCY}")
    return elapsed / lower_bound(stats.latencies, CONCURRENCY), stats.requests - calls


def heavy_tails(count: int = 500, seeds: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    hedged = [one_run(count, seed, hedge=True) for seed in seeds]
    plain = [one_run(count, seed, hedge=False) for seed in seeds]
    ratio = statistics.median(run[0] for run in hedged)
    extra = max(run[1] for run in hedged) / (count * 4)
    return {
        "figure": f"heavy tails (log-normal, median 0.5 s, p99 ~5 s), {count} x (3 + join), "
        f"concurrency {CONCURRENCY}, hedge=True: makespan / max(critical path, work / C)",
        "value": ratio,
        "unit": "ratio",
        "target": "<= 1.2, extra calls <= 5%",
        "met": ratio <= 1.2 and extra <= 0.05,
        "detail": {
            "hedged_ratios": [run[0] for run in hedged],
            "hedged_extra_calls": [run[1] for run in hedged],
            "unhedged_ratios": [run[0] for run in plain],
            "unhedged_median": statistics.median(run[0] for run in plain),
        },
    }


def run() -> list[dict[str, Any]]:
    return [heavy_tails()]


if __name__ == "__main__":
    for row in run():
        print(row)
