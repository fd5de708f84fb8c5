"""The plait rows: the baseline prompt and each optimizer, on the real model.

Every optimizer starts from the same module (the hand-written instruction,
no demonstrations), may spend at most ``budget`` metric calls on the
training and dev sets, and is then scored once on the test set.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.learning.task import INSTRUCTION, Example, correct, query
from plait import LLMInference, Module, Parameter
from plait.clients.base import ChatRequest, ChatResponse
from plait.optimization import (
    DemoOptimizer,
    Demos,
    Evaluator,
    FeedbackOptimizer,
    ReflectiveOptimizer,
    VerifierLoss,
    fit,
)
from plait.resources import ResourceConfig, ResourceManager

DEMOS = 16
"""Demonstrations shown: two per intent."""
BOOTSTRAP = 48
"""Training examples DemoOptimizer runs to bootstrap from: six per intent."""


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; ``error`` says why a row has no figures, ``note`` what happened."""

    name: str
    accuracy: float | None
    metric_calls: int | None
    optimize_seconds: float
    test_seconds: float
    error: str = ""
    note: str = ""


class IntentClassifier(Module):
    """One call: the instruction as system prompt, learnable demonstrations, the message."""

    def __init__(self, k: int = DEMOS) -> None:
        super().__init__()
        self.instruction = Parameter(
            INSTRUCTION,
            description="the system prompt telling the model how to label a banking "
            "customer's message with exactly one intent name",
        )
        self.demos = Demos("customer messages with the intent name to answer", k=k)
        self.classify = LLMInference(
            "model", system_prompt=self.instruction, demos=self.demos, temperature=0, max_tokens=8
        )

    def forward(self, message: str) -> Any:
        return self.classify(query(message))


class Counted:
    """The metric, counting its calls (the budget's unit)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, output: Any, target: Any) -> bool:
        self.calls += 1
        return correct(output, target)


class CappedTokens:
    """Resources that give every request without ``max_tokens`` a cap.

    The backward pass and FeedbackOptimizer send none, and a small model can
    then write until its context is full (minutes per call at 70 tokens/s).
    """

    def __init__(self, inner: ResourceManager, max_tokens: int) -> None:
        self.inner = inner
        self.max_tokens = max_tokens

    async def complete(self, alias: str, request: ChatRequest, *, attempt: int = 0) -> ChatResponse:
        if request.max_tokens is None:
            request = replace(request, max_tokens=self.max_tokens)
        return await self.inner.complete(alias, request, attempt=attempt)

    def check_aliases(self, aliases: Iterable[str]) -> None:
        self.inner.check_aliases(aliases)

    def retry_limit(self, alias: str) -> int | None:
        return self.inner.retry_limit(alias)


def resources(base_url: str) -> ResourceManager:
    endpoint = {
        "model": "local",
        "base_url": base_url,
        "api_key": "none",
        "max_concurrent": 4,
        "timeout": 600,
    }
    return ResourceManager(ResourceConfig({"model": endpoint, "optimizer": endpoint}))


async def rows(base_url: str, data: dict[str, list[Example]], budget: int) -> list[Row]:
    """Baseline, DemoOptimizer, ReflectiveOptimizer and FeedbackOptimizer, in that order."""
    manager = resources(base_url)
    train, dev, test = data["train"], data["dev"], data["test"]
    found: list[Row] = []
    try:

        async def measure(
            name: str, learn: Callable[[IntentClassifier, Counted], Awaitable[Any]]
        ) -> None:
            module = IntentClassifier().bind(manager)
            metric = Counted()
            started = time.perf_counter()
            await learn(module, metric)
            learned = time.perf_counter() - started
            result = await Evaluator(test, correct)(module)
            found.append(Row(name, result.score, metric.calls, learned, result.wall_time))
            print(f"  {name}: test {result.score:.3f}, {metric.calls} metric calls", flush=True)

        async def baseline(module: IntentClassifier, metric: Counted) -> str:
            return "the hand-written instruction, no demonstrations"

        async def demos(module: IntentClassifier, metric: Counted) -> str:
            # the starting module's dev score, the bootstrap run, then one dev score per set
            candidates = (budget - len(dev) - BOOTSTRAP) // len(dev)
            report = await DemoOptimizer(
                module, metric, train, dev, candidates=candidates, seed=0, max_bootstrap=BOOTSTRAP
            ).fit()
            scores = ", ".join(f"{score:.2f}" for score in report.scores)
            return (
                f"dev scores of the sets {scores}; {report.bootstrapped} bootstrapped and "
                f"{report.labelled} labelled demonstrations in the pool"
            )

        async def reflective(module: IntentClassifier, metric: Counted) -> str:
            report = await ReflectiveOptimizer(
                module,
                metric,
                train,
                dev,
                budget,
                minibatch_size=4,
                max_proposals=12,
                max_tokens=160,
                seed=0,
            ).fit()
            reasons = Counter(proposal.reason.split(" (")[0] for proposal in report.proposals)
            told = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common())
            return f"{len(report.proposals)} proposals: {told}; dev {report.best_score:.2f}"

        async def feedback(module: IntentClassifier, metric: Counted) -> str:
            def check(output: Any, target: Any) -> str | None:
                if metric(output, target):
                    return None
                return f"The answer should be the intent name {target!r}."

            capped = CappedTokens(manager, max_tokens=160)
            module.bind(capped)  # the backward pass uses the forward's resources
            optimizer = FeedbackOptimizer([module.instruction], resources=capped, temperature=0)
            steps = (budget - len(dev)) // (len(dev) + 4)
            report = await fit(
                module,
                VerifierLoss(check),
                optimizer,
                train[: 4 * steps],
                dev,
                epochs=1,
                batch_size=4,
                seed=0,
            )
            updates = [update for epoch in report.epochs for update in epoch.updates]
            reasons = Counter(update.reason.split(" (")[0].split(":")[0] for update in updates)
            told = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common())
            return f"{len(updates)} rewrites: {told or 'none'}; dev {report.best_score or 0:.2f}"

        await measure("baseline prompt", baseline)
        await measure("plait DemoOptimizer", demos)
        await measure("plait ReflectiveOptimizer", reflective)
        await measure("plait FeedbackOptimizer (fit)", feedback)
    finally:
        await manager.aclose()
    return found
