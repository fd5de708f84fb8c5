"""Evaluator, DemoOptimizer and ReflectiveOptimizer over real loopback HTTP (the simulator).

The simulated model is the toy learner of ``support.learning``: it names a
word's category only when shown that category or told to, so every score
below is exact, and limits and usage are what crossed the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plait.optimization import DemoOptimizer, Evaluator, ReflectiveOptimizer
from plait.optimization.reflective import REFLECT_HEADER
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator
from support.learning import DEV, HINT, TRAIN, Classifier, accuracy, answer


class Model:
    """The toy learner on ``sim-fast``; a reflector on ``sim-optimizer`` that first
    answers with junk, then with the hint."""

    def __init__(self) -> None:
        self.reflections = 0

    def __call__(self, body: dict[str, Any]) -> str:
        messages = body["messages"]
        if body["model"] == "sim-optimizer":
            assert str(messages[-1]["content"]).startswith(REFLECT_HEADER)
            self.reflections += 1
            return "<VALUE></VALUE>" if self.reflections == 1 else f"<VALUE>{HINT}</VALUE>"
        return answer(messages)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Simulator, ResourceManager]]:
    async with Simulator(latency=0.01, reply=Model()) as sim:
        endpoint = {"base_url": sim.base_url, "api_key": "test-key", "max_concurrent": 3}
        resources = ResourceManager(
            ResourceConfig(
                {
                    "fast": {**endpoint, "model": "sim-fast"},
                    "optimizer": {**endpoint, "model": "sim-optimizer"},
                }
            )
        )
        try:
            yield sim, resources
        finally:
            await resources.aclose()


async def test_an_evaluation_counts_usage_and_keeps_the_endpoint_limit(
    served: tuple[Simulator, ResourceManager],
) -> None:
    sim, resources = served
    module = Classifier(instruction=HINT).bind(resources)
    result = await Evaluator(DEV, accuracy)(module)
    assert result.score == 1.0
    assert result.usage is not None
    assert result.usage.requests == len(DEV) == sim.stats().requests
    assert sim.stats().peak_concurrency <= 3


async def test_demonstrations_learned_over_http_and_resumed_from_the_checkpoint(
    served: tuple[Simulator, ResourceManager], tmp_path: Path
) -> None:
    sim, resources = served
    module = Classifier(k=4).bind(resources)
    report = await DemoOptimizer(
        module, accuracy, TRAIN, DEV, candidates=2, checkpoint_dir=tmp_path
    ).fit()
    assert report.baseline_score == 0.0
    assert report.best_score == 1.0  # four demonstrations cover all four categories
    assert (await Evaluator(DEV, accuracy)(module)).score == 1.0
    sent = sim.stats().requests
    again = await DemoOptimizer(
        Classifier(k=4).bind(resources), accuracy, TRAIN, DEV, candidates=2, checkpoint_dir=tmp_path
    ).fit()
    assert again.scores == report.scores
    assert sim.stats().requests - sent == len(TRAIN)  # only the training-mode bootstrap runs again


async def test_a_reflective_search_over_http_skips_junk_and_keeps_the_hint(
    served: tuple[Simulator, ResourceManager],
) -> None:
    _, resources = served
    module = Classifier().bind(resources)
    report = await ReflectiveOptimizer(module, accuracy, TRAIN, DEV, budget=60).fit()
    assert [p.reason.split(":")[0] for p in report.proposals] == ["rejected", "accepted"]
    assert report.best_score == 1.0
    assert module.instruction.value == HINT
    assert report.metric_calls <= 60
