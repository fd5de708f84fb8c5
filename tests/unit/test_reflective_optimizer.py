"""ReflectiveOptimizer: validated proposals, the budget, the Pareto front, resuming a killed run."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference
from plait.errors import CheckpointError, ConfigError, PermanentError
from plait.optimization import ReflectiveOptimizer, ReflectiveReport
from plait.optimization.pareto import front, pick, wins
from plait.optimization.proposals import rejection
from plait.optimization.reflective import REFLECT_HEADER
from plait.optimization.search_state import FILENAME
from plait.testing import FakeResources
from support.learning import DEV, HINT, TRAIN, Classifier, accuracy, model

BAD = [
    "",  # empty
    "<VALUE>Answer.</VALUE>",  # the current value again
    f"{REFLECT_HEADER} Write the complete new instruction",  # the prompt pasted back
    "<VALUE>Answer <EXAMPLE 1> words</VALUE>",  # the prompt's markers left in
]
GOOD = f"<VALUE>{HINT}</VALUE>"


async def search(
    proposals: list[Any], budget: int = 200, resources: FakeResources | None = None, **options: Any
) -> tuple[Classifier, ReflectiveReport]:
    module = Classifier().bind(resources or model(proposals))
    optimizer = ReflectiveOptimizer(module, accuracy, TRAIN, DEV, budget, **options)
    return module, await optimizer.fit()


async def test_bad_proposals_are_rejected_before_any_metric_call_is_spent_on_them() -> None:
    module, report = await search([*BAD, "<VALUE>Guess.</VALUE>", GOOD], max_proposals=6)
    reasons = [proposal.reason for proposal in report.proposals]
    assert reasons[:4] == [
        "rejected: empty",
        "rejected: unchanged",
        "rejected: an echo of the optimizer's prompt",
        "rejected: leftover markers <EXAMPLE 1>",
    ]
    assert reasons[4] == "rejected: no better on the minibatch (0 vs 0)"
    assert reasons[5] == "accepted: dev score 1.000"
    assert [p.accepted for p in report.proposals] == [False] * 5 + [True]
    # minibatch of 3 per iteration, 3 more for the one valid proposal that was tried,
    # and a dev evaluation for the start and for the accepted one
    assert report.metric_calls == 8 + 6 * 3 + 3 + 3 + 8
    assert (report.baseline_score, report.best_score, report.best_index) == (0.0, 1.0, 1)
    assert module.instruction.value == HINT
    assert report.front == (1,)
    assert report.candidates[1].parent == 0


async def test_a_weak_reflector_never_makes_the_module_worse() -> None:
    module, report = await search(["<VALUE>Guess.</VALUE>"], budget=100)
    assert not any(proposal.accepted for proposal in report.proposals)
    assert report.best_index == 0
    assert module.instruction.value == "Answer."


@pytest.mark.parametrize("budget", [8, 21, 22, 40, 61])
async def test_the_metric_call_budget_is_never_exceeded(budget: int) -> None:
    _, report = await search(["<VALUE>Guess.</VALUE>", GOOD], budget=budget)
    assert report.metric_calls <= budget
    # an iteration needs room for its worst case: 2 minibatches and a dev evaluation
    assert len(report.proposals) == max(0, (budget - 8) // 14) or report.best_score == 1.0


async def test_the_same_seed_gives_the_same_search() -> None:
    proposals = ["<VALUE>Guess.</VALUE>", "<VALUE>Try.</VALUE>", GOOD]
    _, first = await search(proposals, seed=3, max_proposals=4)
    _, again = await search(proposals, seed=3, max_proposals=4)
    assert first.proposals == again.proposals
    assert first.metric_calls == again.metric_calls


async def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    proposals = ["<VALUE>Guess.</VALUE>", "<VALUE>Try.</VALUE>", GOOD]
    _, whole = await search(proposals, max_proposals=4)

    crashing = model([proposals[0], PermanentError("killed")])
    with pytest.raises(PermanentError):
        await search([], resources=crashing, max_proposals=4, checkpoint_dir=tmp_path)
    saved = json.loads((tmp_path / FILENAME).read_text())["state"]
    assert saved["iteration"] == 1
    assert len(saved["candidates"]) == 1

    resources = model(proposals[1:])
    module, resumed = await search(
        [], resources=resources, max_proposals=4, checkpoint_dir=tmp_path
    )
    assert resumed.resumed
    assert not whole.resumed
    assert resumed.proposals == whole.proposals
    assert [c.scores for c in resumed.candidates] == [c.scores for c in whole.candidates]
    assert resumed.metric_calls == whole.metric_calls
    assert module.instruction.value == HINT
    # candidate 0 was scored before the kill and is not scored again
    dev_words = {f"Word: {word}" for word, _ in DEV}
    system = [call.system for call in resources.calls if call.prompt in dev_words]
    assert "Answer." not in system

    with pytest.raises(CheckpointError, match="other data"):
        await search(proposals, seed=1, checkpoint_dir=tmp_path)


def test_the_pareto_front_keeps_every_example_winner_and_drops_the_dominated() -> None:
    scores = [
        [1.0, 0.0, 0.0, 0.0],  # 0: wins example 0
        [1.0, 1.0, 0.0, 0.0],  # 1: dominates 0
        [0.0, 0.0, 1.0, 0.0],  # 2: wins example 2
        [1.0, 1.0, 0.0, 0.0],  # 3: a copy of 1
    ]
    assert wins(scores) == {1: 2, 2: 1}
    assert front(scores) == [1, 2]
    assert front([[0.0, 0.0], [0.0, 0.0]]) == [0]
    picks = [pick(scores, random.Random(seed)) for seed in range(200)]
    assert set(picks) == {1, 2}
    assert picks.count(1) > picks.count(2)


def test_proposal_checks() -> None:
    assert rejection("New text.", "Old text.", "prompt") is None
    assert rejection("  ", "Old", "prompt") == "empty"
    assert rejection("old  TEXT", "Old text", "prompt") == "unchanged"
    assert rejection("Keep <CONTEXT> here", "Use <CONTEXT>", "prompt") is None
    assert rejection("Use <VALUE> here", "Use", "prompt") == "leftover markers <VALUE>"
    prompt = "A long first line of the prompt\nA long second line here\nthird line of it all"
    assert rejection(prompt, "Old", prompt) == "an echo of the optimizer's prompt"
    assert rejection("x. Fixed sentence.", "Old", "p", scaffold=["fixed sentence"]) is not None


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="learnable text Parameter"):
        ReflectiveOptimizer(LLMInference("fast"), accuracy, TRAIN, DEV, 100)
    with pytest.raises(ConfigError, match="at least one dev evaluation"):
        ReflectiveOptimizer(Classifier(), accuracy, TRAIN, DEV, 7)
    with pytest.raises(ConfigError, match="minibatch_size"):
        ReflectiveOptimizer(Classifier(), accuracy, TRAIN, DEV, 100, minibatch_size=0)
    with pytest.raises(ConfigError, match="non-empty"):
        ReflectiveOptimizer(Classifier(), accuracy, [], DEV, 100)
