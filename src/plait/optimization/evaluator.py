"""Evaluator: one module scored on a labelled set, the way every optimizer compares candidates.

All inputs run as one batch on the engine, so they are concurrent under the
same endpoint limits, retries and ``max_concurrent`` as any call, and the
engine's progress bar and checkpoints apply. With ``checkpoint_dir`` a killed
evaluation keeps every output already produced: the rerun returns those from
the store and only runs the rest. Scores are recomputed from outputs, which
costs nothing, so the store never has to hold them. Each version of the
module (say, each candidate an optimizer tries) gets its own run in the store
(``checkpoint_mismatch="new"`` unless told otherwise), so going back to an
earlier candidate reuses its outputs too.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, TypeAlias

from plait.errors import ConfigError, MetricError
from plait.execution.results import BatchResult
from plait.execution.settings import check_setting_names
from plait.module import Module
from plait.resources.manager import ResourceManager
from plait.resources.protocol import as_resource_manager
from plait.resources.usage import AliasUsage
from plait.values import unwrap

Example: TypeAlias = tuple[Any, Any]
"""An (input, target) pair; a tuple input is unpacked as positional arguments."""

Metric: TypeAlias = Callable[[Any, Any], float | bool | Awaitable[float | bool]]
"""``metric(output, target)``: True/False or a score from 0 to 1, higher is better."""


@dataclass(frozen=True, slots=True)
class EvalRow:
    """One example's outcome. A failed call scores 0 and keeps its error."""

    index: int
    input: Any
    target: Any
    output: Any
    score: float
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class EvalUsage:
    """What one evaluation spent on its resources, over every alias."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_hits: int = 0
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class EvalResult:
    """A module's mean score on a set, every row, and what it cost.

    ``usage`` is None when the resources do not count usage (a test fake);
    it is the difference of the manager's counters over the evaluation, so
    other work on the same manager at the same time is counted too.
    """

    score: float
    rows: tuple[EvalRow, ...]
    metric_calls: int
    wall_time: float
    usage: EvalUsage | None = None

    @property
    def scores(self) -> tuple[float, ...]:
        return tuple(row.score for row in self.rows)

    @property
    def cost(self) -> float | None:
        return None if self.usage is None else self.usage.cost

    @property
    def errors(self) -> int:
        return sum(1 for row in self.rows if row.error is not None)


class Evaluator:
    """Scores modules on ``examples`` with ``metric``: ``result = await evaluator(module)``.

    ``settings`` are execution settings for the evaluation's run (they win
    over the module's ``bind()`` and the enclosing ``ExecutionSettings``),
    e.g. ``progress=True``, ``max_concurrent=4`` or ``checkpoint_dir=...``.
    """

    def __init__(self, examples: Sequence[Example], metric: Metric, **settings: Any) -> None:
        check_setting_names(settings, where="Evaluator")
        self.examples: list[Example] = checked_examples(examples, "Evaluator")
        if not callable(metric):
            raise ConfigError(f"Evaluator metric must be callable, got {metric!r}")
        self.metric = metric
        if settings.get("checkpoint_dir") is not None:
            settings.setdefault("checkpoint_mismatch", "new")
        if settings.get("resources") is not None:
            # One manager for every module evaluated, so limits and usage add up.
            settings["resources"] = as_resource_manager(settings["resources"])
        self.settings = settings

    def __len__(self) -> int:
        return len(self.examples)

    async def __call__(self, module: Module) -> EvalResult:
        """Run ``module`` (in eval mode) on every example and score each output."""
        started = time.perf_counter()
        manager = _manager(module, self.settings)
        before = _counters(manager)
        was_training = module.training
        module.eval()
        try:
            inputs = [inputs for inputs, _ in self.examples]
            results: list[BatchResult] = await module.batch(
                inputs, **{**self.settings, "streaming": True}
            )
        finally:
            module.train(was_training)
        rows = await score_results(results, self.examples, self.metric)
        usage = None if manager is None else _spent(before, _counters(manager))
        return EvalResult(
            score=fmean(row.score for row in rows) if rows else 0.0,
            rows=tuple(rows),
            metric_calls=sum(1 for row in rows if row.error is None),
            wall_time=time.perf_counter() - started,
            usage=usage,
        )


def checked_examples(examples: Sequence[Example], where: str) -> list[Example]:
    """The examples as a list, each checked to be an (input, target) pair."""
    found = list(examples)
    for position, example in enumerate(found):
        if not (isinstance(example, tuple) and len(example) == 2):
            raise ConfigError(
                f"{where}: example {position} must be an (input, target) pair, got {example!r:.80}"
            )
    return found


async def score(metric: Metric, output: Any, target: Any) -> float:
    """``metric(output, target)`` as a float in [0, 1] (a bool counts as 1 or 0)."""
    found = metric(output, target)
    if inspect.isawaitable(found):
        found = await found
    if isinstance(found, bool):
        return 1.0 if found else 0.0
    if isinstance(found, int | float) and 0.0 <= found <= 1.0:
        return float(found)
    raise MetricError(
        f"the metric must return a bool or a number from 0 to 1, got {found!r} "
        f"(output {output!r:.60}, target {target!r:.60})"
    )


async def score_results(
    results: Sequence[BatchResult], examples: Sequence[Example], metric: Metric
) -> list[EvalRow]:
    """One row per result (in index order); a failed input scores 0 without a metric call."""
    rows: list[EvalRow] = []
    for result in sorted(results, key=lambda found: found.index):
        given, target = examples[result.index]
        if result.error is not None:
            rows.append(EvalRow(result.index, given, target, None, 0.0, result.error))
            continue
        output = unwrap(result.output)
        rows.append(
            EvalRow(result.index, given, target, output, await score(metric, output, target))
        )
    return rows


def _manager(module: Module, settings: dict[str, Any]) -> ResourceManager | None:
    resources = settings.get("resources") or module.resolved_settings().resources
    return resources if isinstance(resources, ResourceManager) else None


def _counters(manager: ResourceManager | None) -> dict[str, AliasUsage]:
    return {} if manager is None else manager.usage()


def _spent(before: dict[str, AliasUsage], after: dict[str, AliasUsage]) -> EvalUsage:
    requests = input_tokens = output_tokens = cache_hits = 0
    cost = 0.0
    for alias, now in after.items():
        then = before.get(alias) or AliasUsage()
        requests += now.requests - then.requests
        input_tokens += now.input_tokens - then.input_tokens
        output_tokens += now.output_tokens - then.output_tokens
        cache_hits += now.cache_hits - then.cache_hits
        cost += now.cost - then.cost
    return EvalUsage(requests, input_tokens, output_tokens, cache_hits, cost)
