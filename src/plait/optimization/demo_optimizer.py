"""DemoOptimizer: learn which worked examples each call shows, by scoring sets on a dev set.

It needs no optimizer model, which is why it wins on small ones: a 135M-parameter
model writes poor instructions but copies a demonstrated pattern well. The
recipe is bootstrapping few-shot examples:

1. Run the module on training examples in training mode. For every example
   the metric passes, each ``LLMInference`` with :class:`~plait.demos.Demos`
   yields a demonstration from what it actually received and answered (the
   module's own passing behaviour). For examples it fails, a call whose reply
   is the module's output yields the labelled demonstration (its prompt, the
   target as the reply).
   The training examples run are a seeded sample of ``max_bootstrap``,
   stratified by target, so every label is as well represented in the pool
   as the sample size allows.
2. Draw ``candidates`` sets of ``k`` from that pool with a seeded generator,
   balanced over targets: in rounds, one demonstration per target (targets
   in a fresh shuffled order each round), so a set holds every label about
   equally often and none more than twice in a row. A small model tends to
   answer with whichever label dominates or closes its examples.
3. Score the current demonstrations and every drawn set on the dev set with
   the :class:`~plait.optimization.evaluator.Evaluator`, and keep the best.
   Ties go to the earlier set, and the current demonstrations come first, so
   the module never ends worse on the dev set than it started.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from plait.demos import Demo, Demos
from plait.errors import ConfigError
from plait.module import Module
from plait.optimization.evaluator import Evaluator, Example, Metric, checked_examples
from plait.optimization.traces import Trace, run_traced
from plait.values import to_text

_REDRAWS = 16
"""Attempts at a set not drawn before, before a repeat is accepted."""


@dataclass(frozen=True, slots=True)
class DemoCandidate:
    """One set of demonstrations (per ``Demos`` name, as saved) and its dev score."""

    index: int
    state: dict[str, str]
    score: float


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What ``fit`` found. Candidate 0 is the module's demonstrations before ``fit``."""

    best_index: int
    candidates: tuple[DemoCandidate, ...]
    bootstrapped: int
    """Demonstrations taken from the module's own passing runs."""
    labelled: int
    """Demonstrations made from labelled examples the module failed."""
    metric_calls: int
    wall_time: float

    @property
    def best_score(self) -> float:
        return self.candidates[self.best_index].score

    @property
    def baseline_score(self) -> float:
        return self.candidates[0].score

    @property
    def best_state(self) -> dict[str, str]:
        return self.candidates[self.best_index].state

    @property
    def scores(self) -> list[float]:
        return [candidate.score for candidate in self.candidates]


@dataclass(frozen=True, slots=True)
class _Pooled:
    demo: Demo
    label: str
    bootstrapped: bool


_T = TypeVar("_T")
_Set = dict[str, tuple[Demo, ...]]
"""Demonstrations per ``Demos`` name."""


class DemoOptimizer:
    """Choose the demonstrations of ``module``'s ``Demos`` by their score on ``devset``.

    Args:
        module: a module with at least one learnable ``Demos``.
        metric: ``metric(output, target)`` -> bool or a score in [0, 1].
        trainset: (input, target) pairs that demonstrations come from.
        devset: (input, target) pairs that candidate sets are scored on.
        candidates: how many sets to draw and score (besides the current one).
        seed: the draws' seed; the same seed, module and data give the same result.
        max_bootstrap: run at most this many training examples, a seeded sample
            (default: all of them).
        threshold: the score at which an output counts as passing.
        settings: execution settings for every run (``progress=True``,
            ``checkpoint_dir=...``, ``max_concurrent=...``).
    """

    def __init__(
        self,
        module: Module,
        metric: Metric,
        trainset: Sequence[Example],
        devset: Sequence[Example],
        candidates: int = 8,
        seed: int = 0,
        *,
        max_bootstrap: int | None = None,
        threshold: float = 1.0,
        **settings: Any,
    ) -> None:
        self.demos: dict[str, Demos] = {
            name: param
            for name, param in module.named_parameters()
            if isinstance(param, Demos) and param.requires_grad
        }
        if not self.demos:
            raise ConfigError(
                "DemoOptimizer needs a module with a learnable Demos, e.g. "
                "LLMInference(alias, demos=Demos('examples of ...', k=4))"
            )
        if not isinstance(candidates, int) or candidates < 1:
            raise ConfigError(
                f"DemoOptimizer candidates must be a positive int, got {candidates!r}"
            )
        if max_bootstrap is not None and max_bootstrap < 1:
            raise ConfigError(f"max_bootstrap must be a positive int, got {max_bootstrap!r}")
        self.module = module
        self.metric = metric
        self.trainset = checked_examples(trainset, "DemoOptimizer trainset")
        if not self.trainset:
            raise ConfigError("DemoOptimizer needs a non-empty trainset")
        self.evaluator = Evaluator(
            checked_examples(devset, "DemoOptimizer devset"), metric, **settings
        )
        if not len(self.evaluator):
            raise ConfigError("DemoOptimizer needs a non-empty devset")
        self.candidates = candidates
        self.seed = seed
        self.max_bootstrap = max_bootstrap
        self.threshold = threshold
        self.settings = settings

    async def fit(self) -> DemoReport:
        """Bootstrap, draw and score candidate sets; load the best into the module."""
        started = time.perf_counter()
        current = {name: demos.pairs for name, demos in self.demos.items()}
        baseline = await self.evaluator(self.module)
        calls = baseline.metric_calls
        examples = self.trainset
        if self.max_bootstrap is not None and self.max_bootstrap < len(examples):
            examples = _stratified(examples, self.max_bootstrap, random.Random(self.seed))
        traces = await run_traced(self.module, examples, self.metric, self.settings)
        calls += sum(1 for trace in traces if trace.row.error is None)
        pools = self._pools(traces)
        found = [DemoCandidate(0, self._state(), baseline.score)]
        sets = [current, *self._draws(pools, current)]
        best = 0
        for index, chosen in enumerate(sets[1:], 1):
            self._load(chosen)
            result = await self.evaluator(self.module)
            calls += result.metric_calls
            found.append(DemoCandidate(index, self._state(), result.score))
            if result.score > found[best].score:
                best = index
        self._load(sets[best])
        return DemoReport(
            best_index=best,
            candidates=tuple(found),
            bootstrapped=sum(1 for pool in pools.values() for item in pool if item.bootstrapped),
            labelled=sum(1 for pool in pools.values() for item in pool if not item.bootstrapped),
            metric_calls=calls,
            wall_time=time.perf_counter() - started,
        )

    def _pools(self, traces: Sequence[Trace]) -> dict[str, list[_Pooled]]:
        """Each Demos' candidate demonstrations, bootstrapped ones first."""
        pools: dict[str, list[_Pooled]] = {name: [] for name in self.demos}
        labelled: dict[str, list[_Pooled]] = {name: [] for name in self.demos}
        for trace in traces:
            row = trace.row
            if row.error is not None:
                continue
            label = to_text(row.target)
            passed = row.score >= self.threshold
            for name, demos in self.demos.items():
                for call in trace.calls(demos):
                    if passed:
                        pools[name].append(_Pooled(Demo(call.prompt, call.reply), label, True))
                    elif call.is_output:
                        labelled[name].append(_Pooled(Demo(call.prompt, label), label, False))
        return {name: pools[name] + labelled[name] for name in pools}

    def _draws(self, pools: dict[str, list[_Pooled]], current: _Set) -> list[_Set]:
        rng = random.Random(self.seed)
        seen = {_key(current)}
        draws: list[_Set] = []
        for _ in range(self.candidates):
            drawn = current
            for _ in range(_REDRAWS):
                drawn = {name: _draw(pool, self.demos[name].k, rng) for name, pool in pools.items()}
                if _key(drawn) not in seen:
                    break
            seen.add(_key(drawn))
            draws.append(drawn)
        return draws

    def _load(self, chosen: _Set) -> None:
        for name, pairs in chosen.items():
            self.demos[name].set(pairs)

    def _state(self) -> dict[str, str]:
        return {name: demos.value for name, demos in self.demos.items()}


def _rounds(groups: list[list[_T]], rng: random.Random) -> Iterator[_T]:
    """One item of each group per round, groups in a new shuffled order every round."""
    for group in groups:
        rng.shuffle(group)
    for depth in range(max((len(group) for group in groups), default=0)):
        order = [group for group in groups if depth < len(group)]
        rng.shuffle(order)
        yield from (group[depth] for group in order)


def _by_label(items: Sequence[_T], label: Callable[[_T], str]) -> list[list[_T]]:
    groups: dict[str, list[_T]] = {}
    for item in items:
        groups.setdefault(label(item), []).append(item)
    return list(groups.values())


def _stratified(examples: Sequence[Example], n: int, rng: random.Random) -> list[Example]:
    """``n`` examples, the same number of each target where there are enough."""
    groups = _by_label(examples, lambda example: to_text(example[1]))
    return list(itertools.islice(_rounds(groups, rng), n))


def _draw(pool: Sequence[_Pooled], k: int, rng: random.Random) -> tuple[Demo, ...]:
    """``k`` demonstrations balanced over labels, interleaved in the order shown."""
    groups = _by_label(pool, lambda item: item.label)
    return tuple(item.demo for item in itertools.islice(_rounds(groups, rng), k))


def _key(chosen: _Set) -> tuple[tuple[str, tuple[Demo, ...]], ...]:
    return tuple(sorted(chosen.items()))
