"""DemoOptimizer: bootstrapped and labelled demonstrations, seeded draws, the best set loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference, Module
from plait.clients.base import ChatRequest
from plait.demos import Demo, Demos
from plait.errors import ConfigError
from plait.optimization import DemoOptimizer, DemoReport, Evaluator
from plait.testing import FakeResources
from support.learning import CATEGORY, DEV, HINT, TRAIN, Classifier, accuracy, answer, model


async def optimize(
    seed: int = 0, candidates: int = 4, **options: Any
) -> tuple[Classifier, DemoReport]:
    module = Classifier().bind(model())
    report = await DemoOptimizer(module, accuracy, TRAIN, DEV, candidates, seed, **options).fit()
    return module, report


async def test_labelled_demonstrations_lift_the_dev_score_and_the_best_set_is_loaded() -> None:
    module, report = await optimize()
    assert report.baseline_score == 0.0
    # k=2 demonstrations of two different categories teach the model half of the dev set
    assert report.scores == [0.0, 0.5, 0.5, 0.5, 0.5]
    assert (report.best_index, report.best_score) == (1, 0.5)
    assert (report.bootstrapped, report.labelled) == (0, len(TRAIN))
    assert module.state_dict()["demos"] == report.best_state["demos"]
    labels = [demo.output for demo in module.demos.pairs]
    assert len(set(labels)) == 2  # the draw covers as many labels as k allows
    assert all(demo.input.startswith("Word: ") for demo in module.demos.pairs)
    assert (await Evaluator(DEV, accuracy)(module)).score == report.best_score


async def test_the_report_counts_every_metric_call_and_candidate() -> None:
    _, report = await optimize(candidates=3)
    assert [candidate.index for candidate in report.candidates] == [0, 1, 2, 3]
    assert report.metric_calls == len(DEV) + len(TRAIN) + 3 * len(DEV)
    assert report.wall_time > 0
    assert len({candidate.state["demos"] for candidate in report.candidates}) == 4


async def test_the_same_seed_gives_the_same_search() -> None:
    first = (await optimize(seed=7))[1]
    again = (await optimize(seed=7))[1]
    other = (await optimize(seed=8))[1]
    assert [c.state for c in first.candidates] == [c.state for c in again.candidates]
    assert first.best_state == again.best_state
    assert [c.state for c in first.candidates] != [c.state for c in other.candidates]


async def test_the_modules_own_passing_replies_become_demonstrations() -> None:
    def verbose(request: ChatRequest) -> str:
        return f"It is {answer(request.messages)}."

    module = Classifier(instruction=HINT, k=3).bind(FakeResources({"fast": verbose}))
    report = await DemoOptimizer(
        module, lambda out, target: target in out, TRAIN, DEV, candidates=2, max_bootstrap=4
    ).fit()
    assert (report.bootstrapped, report.labelled) == (4, 0)
    assert report.metric_calls == len(DEV) + 4 + 2 * len(DEV)
    # every set already scores 1.0; ties keep the module's own (empty) demonstrations
    assert report.scores == [1.0, 1.0, 1.0]
    assert report.best_index == 0
    assert module.demos.pairs == ()
    drawn = Demos("x", k=3)
    drawn.value = report.candidates[1].state["demos"]
    for demo in drawn.pairs:
        word = demo.input.removeprefix("Word: ")
        assert demo.output == f"It is {CATEGORY[word]}."


async def test_the_bootstrap_sample_holds_every_target_equally() -> None:
    # TRAIN holds two words of each of four categories; four examples are one of each
    for seed in range(5):
        module = Classifier(k=4).bind(model())
        report = await DemoOptimizer(
            module, accuracy, TRAIN, DEV, candidates=1, seed=seed, max_bootstrap=4
        ).fit()
        assert report.labelled == 4
        drawn = Demos("x", k=4)
        drawn.value = report.candidates[1].state["demos"]
        assert sorted(demo.output for demo in drawn.pairs) == sorted(set(CATEGORY.values()))


async def test_drawn_sets_are_balanced_over_labels_and_interleaved() -> None:
    module = Classifier(k=len(TRAIN)).bind(model())
    report = await DemoOptimizer(module, accuracy, TRAIN, DEV, candidates=3).fit()
    labels = sorted(set(CATEGORY.values()))
    orders = set()
    for candidate in report.candidates[1:]:
        drawn = Demos("x", k=len(TRAIN))
        drawn.value = candidate.state["demos"]
        shown = [demo.output for demo in drawn.pairs]
        # two rounds, each showing every label once: balanced, never three in a row
        assert sorted(shown[:4]) == labels
        assert sorted(shown[4:]) == labels
        orders.add(tuple(shown))
    assert len(orders) > 1  # the order within a round is drawn, not fixed


async def test_a_better_starting_set_is_never_replaced_by_a_worse_one() -> None:
    module = Classifier(k=4).bind(model())
    start = [(f"Word: {w}", CATEGORY[w]) for w in ("apple", "oak", "cod", "red")]
    module.demos.set(start)
    report = await DemoOptimizer(module, accuracy, TRAIN[:2], DEV, candidates=3).fit()
    assert report.baseline_score == 1.0
    assert report.best_index == 0
    assert module.demos.pairs == tuple(Demo(i, o) for i, o in start)


async def test_several_demos_are_drawn_each_from_its_own_calls() -> None:
    class Two(Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = LLMInference("fast", demos=Demos("first step examples", k=1))
            self.second = LLMInference("fast", demos=Demos("second step examples", k=1))

        def forward(self, word: str) -> Any:
            return self.second(f"Word: {self.first(f'Word: {word}')}")

    module = Two().bind(model())
    report = await DemoOptimizer(module, accuracy, TRAIN, DEV, candidates=1).fit()
    drawn = report.candidates[1].state
    assert set(drawn) == {"first.demos", "second.demos"}
    # only the call whose reply is the output gets labelled demonstrations
    assert json.loads(drawn["first.demos"]) == []
    [pair] = json.loads(drawn["second.demos"])
    assert pair["input"] == "Word: not sure"
    assert pair["output"] in CATEGORY.values()


async def test_dev_outputs_are_checkpointed_per_candidate(tmp_path: Path) -> None:
    resources = model()
    module = Classifier().bind(resources)
    await DemoOptimizer(module, accuracy, TRAIN, DEV, 2, checkpoint_dir=tmp_path).fit()
    first = resources.call_count
    assert first == len(DEV) + len(TRAIN) + 2 * len(DEV)
    module = Classifier().bind(resources)
    report = await DemoOptimizer(module, accuracy, TRAIN, DEV, 2, checkpoint_dir=tmp_path).fit()
    # the rerun pays only for the training-mode bootstrap; every dev output is stored
    assert resources.call_count - first == len(TRAIN)
    assert report.scores == [0.0, 0.5, 0.5]


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="learnable Demos"):
        DemoOptimizer(LLMInference("fast"), accuracy, TRAIN, DEV)
    with pytest.raises(ConfigError, match="candidates"):
        DemoOptimizer(Classifier(), accuracy, TRAIN, DEV, candidates=0)
    with pytest.raises(ConfigError, match="trainset"):
        DemoOptimizer(Classifier(), accuracy, [], DEV)
    with pytest.raises(ConfigError, match="devset"):
        DemoOptimizer(Classifier(), accuracy, TRAIN, [])
