"""Ray Data: the same plait module on every Ray worker, under one shared rate budget.

Each worker builds the pipeline once; a ``RateBudget`` actor hands out request
permits so that the workers together stay under the endpoint's 600 requests per
minute instead of each spending the whole budget. Rows that fail land in the
``error`` column. Needs the extra: ``pip install plait[ray]``.
"""

from __future__ import annotations

import os
from typing import Any

from plait import LLMInference, Module
from plait.testing import Simulator

RPM = 600.0


class Classify(Module):
    def __init__(self) -> None:
        super().__init__()
        self.label = LLMInference("fast", temperature=0)

    def forward(self, text: str) -> Any:
        return self.label(f"Label the topic of: {text}")


def build() -> Classify:
    return Classify()


def classify_rows(base_url: str, texts: list[str]) -> list[dict[str, Any]]:
    """Run ``Classify`` over ``texts`` as a Ray dataset; needs ``ray.init`` first."""
    import ray

    from plait.integrations.ray import create_budget, map_dataset

    budget = create_budget({"fast": {"rate_limit": RPM}})
    resources = {"fast": {"model": "demo", "base_url": base_url, "max_concurrent": 8}}
    dataset = ray.data.from_items([{"input": text} for text in texts])
    rows: list[dict[str, Any]] = map_dataset(
        dataset, build, resources, budget=budget, concurrency=2, batch_size=8
    ).take_all()
    return rows


def main() -> None:
    # Ray reads this when imported: under `uv run` it would otherwise start its
    # workers through uv, in an environment that may lack the ray extra.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        with Simulator.spawn(latency=0.05, rate_limit=RPM, rate_window=60) as sim:
            rows = classify_rows(sim.base_url, [f"news item {index}" for index in range(24)])
            print(f"{len(rows)} rows, server 429s: {sim.stats().rate_limited}")
            for row in rows[:3]:
                print(row)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
