"""ReflectiveOptimizer: instructions rewritten from traces and feedback, GEPA-style.

Each iteration picks a parent from the per-example Pareto front of the
candidates found so far (:mod:`plait.optimization.pareto`), runs it on a
small minibatch of training examples in training mode, and shows an LLM one
component (a learnable text ``Parameter``) with what the call using it
received, answered and was told. The reply is a proposal. It is checked
before anything is spent on it (:mod:`plait.optimization.proposals`), then
run on the same minibatch, and only if it does strictly better there is it
scored on the whole dev set and added as a candidate. The result is the
candidate with the best mean dev score, ties going to the earlier one, and
candidate 0 is the module as it was: a weak reflector can waste calls but
cannot make the module worse on the dev set.

The budget counts metric calls (one per example scored, minibatches
included) and is never exceeded: an iteration starts only if its worst case
fits; the search also stops once a candidate is perfect on the dev set. With
``checkpoint_dir`` every iteration's outcome is saved
(:mod:`plait.optimization.search_state`) and dev-set outputs go to the
engine's checkpoint, so a killed run resumes where it was, and a resumed run
ends exactly as an uninterrupted one would.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plait.demos import Demos
from plait.errors import ConfigError
from plait.execution.call import run
from plait.inference import LLMInference
from plait.markup import tagged
from plait.module import Module
from plait.optimization.evaluator import EvalResult, Evaluator, Example, Metric, checked_examples
from plait.optimization.pareto import front, pick
from plait.optimization.proposals import rejection
from plait.optimization.search_state import Candidate, Proposal, SearchState, SearchStore
from plait.optimization.traces import Trace, run_traced
from plait.parameter import Parameter
from plait.storage.codec import content_hash
from plait.values import jsonable, to_text

Feedback = Callable[[Any, Any], str]
"""``feedback(output, target)``: what the reflector is told about one output."""

REFLECT_HEADER = "Optimizer: improve the instruction of a language-model call."
REFLECT_SYSTEM = (
    "You write instructions for a language model. Read how it did with its current "
    "instruction and write a better one."
)
_ASK = "Write the complete new instruction inside <VALUE></VALUE>. Keep it short."
_CHECKPOINT_SETTINGS = ("checkpoint_dir", "checkpoint_mismatch")


@dataclass(frozen=True, slots=True)
class ReflectiveReport:
    """What ``fit`` found. Candidate 0 is the module as it was before ``fit``."""

    best_index: int
    candidates: tuple[Candidate, ...]
    proposals: tuple[Proposal, ...]
    front: tuple[int, ...]
    metric_calls: int
    wall_time: float
    resumed: bool

    @property
    def best_score(self) -> float:
        return self.candidates[self.best_index].score

    @property
    def baseline_score(self) -> float:
        return self.candidates[0].score

    @property
    def best_state(self) -> dict[str, str]:
        return dict(self.candidates[self.best_index].values)


class ReflectiveOptimizer:
    """Improve ``module``'s learnable text parameters within ``budget`` metric calls.

    Args:
        module: the module; its learnable ``Parameter`` s (not ``Demos``) are
            the components, rewritten one at a time, in turn.
        metric: ``metric(output, target)`` -> bool or a score in [0, 1].
        trainset: (input, target) pairs the minibatches come from.
        devset: (input, target) pairs every accepted proposal is scored on.
        budget: the most metric calls to spend, the first dev evaluation included.
        feedback: ``feedback(output, target)`` -> text for the reflector
            (default: "Correct." or the expected answer).
        alias: the endpoint pool the reflector's calls use.
        resources: where ``alias`` lives (default: the module's, else the
            enclosing ``ExecutionSettings``').
        temperature, max_tokens: sent with the reflector's calls.
        minibatch_size: training examples per iteration.
        max_proposals: stop after this many iterations, even with budget left.
        seed: the same seed, module and data give the same search.
        checkpoint_dir: keep the search there, so a killed run resumes.
        settings: execution settings for the module's runs.
    """

    def __init__(
        self,
        module: Module,
        metric: Metric,
        trainset: Sequence[Example],
        devset: Sequence[Example],
        budget: int,
        *,
        feedback: Feedback | None = None,
        alias: str = "optimizer",
        resources: Any = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = 256,
        minibatch_size: int = 3,
        max_proposals: int | None = None,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        **settings: Any,
    ) -> None:
        self.components: dict[str, Parameter] = {
            name: param
            for name, param in module.named_parameters()
            if param.requires_grad and not isinstance(param, Demos)
        }
        if not self.components:
            raise ConfigError(
                "ReflectiveOptimizer needs a module with a learnable text Parameter "
                "(e.g. system_prompt=Parameter(..., description=...))"
            )
        self.trainset = checked_examples(trainset, "ReflectiveOptimizer trainset")
        devset = checked_examples(devset, "ReflectiveOptimizer devset")
        if not self.trainset or not devset:
            raise ConfigError("ReflectiveOptimizer needs a non-empty trainset and devset")
        if not isinstance(minibatch_size, int) or minibatch_size < 1:
            raise ConfigError(f"minibatch_size must be a positive int, got {minibatch_size!r}")
        if not isinstance(budget, int) or budget < len(devset):
            raise ConfigError(
                f"ReflectiveOptimizer budget must be an int of at least one dev evaluation "
                f"({len(devset)} metric calls), got {budget!r}"
            )
        self.module = module
        self.metric = metric
        self.budget = budget
        self.feedback = feedback
        self.minibatch_size = min(minibatch_size, len(self.trainset))
        self.max_proposals = max_proposals
        self.seed = seed
        self.resources = resources
        self._reflector = LLMInference(
            alias, system_prompt=REFLECT_SYSTEM, temperature=temperature, max_tokens=max_tokens
        )
        plain = {key: value for key, value in settings.items() if key not in _CHECKPOINT_SETTINGS}
        self.settings = plain
        outputs = None if checkpoint_dir is None else Path(checkpoint_dir) / "outputs"
        self._dev = Evaluator(
            devset, metric, **plain, **({} if outputs is None else {"checkpoint_dir": outputs})
        )
        self._store = None if checkpoint_dir is None else SearchStore(checkpoint_dir)
        self._initial = {name: param.value for name, param in self.components.items()}
        self._key = content_hash(
            {
                "components": self._initial,
                "train": self.trainset,
                "dev": devset,
                "seed": seed,
                "minibatch": self.minibatch_size,
            },
            default=jsonable,
        )

    async def fit(self) -> ReflectiveReport:
        """Search until the budget (or ``max_proposals``) is spent; load the best candidate."""
        started = time.perf_counter()
        state = self._store.load(self._key) if self._store is not None else None
        resumed = state is not None
        if state is None:
            state = SearchState(self._key)
        if not state.candidates:
            self._load(self._initial)
            result = await self._dev(self.module)
            state.candidates.append(Candidate(0, None, dict(self._initial), list(result.scores)))
            state.metric_calls += result.metric_calls
            self._save(state)
        worst_case = 2 * self.minibatch_size + len(self._dev)
        while (
            state.metric_calls + worst_case <= self.budget
            and (self.max_proposals is None or state.iteration < self.max_proposals)
            and max(candidate.score for candidate in state.candidates) < 1.0
        ):
            await self._iterate(state)
            state.iteration += 1
            self._save(state)
        candidates = state.candidates
        best = max(range(len(candidates)), key=lambda index: (candidates[index].score, -index))
        self._load(candidates[best].values)
        return ReflectiveReport(
            best_index=best,
            candidates=tuple(candidates),
            proposals=tuple(state.proposals),
            front=tuple(front(state.scores())),
            metric_calls=state.metric_calls,
            wall_time=time.perf_counter() - started,
            resumed=resumed,
        )

    async def _iterate(self, state: SearchState) -> None:
        iteration = state.iteration
        rng = random.Random(f"{self.seed}:{iteration}")
        parent_index = pick(state.scores(), rng)
        parent = state.candidates[parent_index]
        name = list(self.components)[iteration % len(self.components)]
        batch = rng.sample(self.trainset, self.minibatch_size)
        self._load(parent.values)
        traces = await run_traced(self.module, batch, self.metric, self.settings)
        state.metric_calls += sum(1 for trace in traces if trace.row.error is None)
        before = sum(trace.row.score for trace in traces)

        def outcome(value: str, reason: str, candidate: int | None = None) -> None:
            accepted = candidate is not None
            state.proposals.append(
                Proposal(iteration, parent_index, name, value, accepted, reason, candidate)
            )

        if before >= len(traces):
            return outcome("", "skipped: the parent solves the whole minibatch")
        prompt = self._prompt(name, traces)
        reply = await run(
            self._reflector,
            prompt,
            resources=self.resources or self.module.resolved_settings().resources,
        )
        value = tagged(str(reply), "VALUE") or str(reply).strip()
        invalid = rejection(
            value, parent.values[name], prompt, (REFLECT_HEADER, REFLECT_SYSTEM, _ASK)
        )
        if invalid is not None:
            return outcome(value, f"rejected: {invalid}")
        values = {**parent.values, name: value}
        self._load(values)
        mini = await Evaluator(batch, self.metric, **self.settings)(self.module)
        state.metric_calls += mini.metric_calls
        after = sum(mini.scores)
        if after <= before:
            return outcome(value, f"rejected: no better on the minibatch ({after:g} vs {before:g})")
        result: EvalResult = await self._dev(self.module)
        state.metric_calls += result.metric_calls
        index = len(state.candidates)
        state.candidates.append(Candidate(index, parent_index, values, list(result.scores)))
        return outcome(value, f"accepted: dev score {result.score:.3f}", index)

    def _prompt(self, name: str, traces: Sequence[Trace]) -> str:
        param = self.components[name]
        lines = [
            REFLECT_HEADER,
            "",
            f"<PURPOSE>{param.description}</PURPOSE>",
            "<INSTRUCTION>",
            param.value,
            "</INSTRUCTION>",
            "How the model did with it:",
        ]
        for number, trace in enumerate(traces, 1):
            row = trace.row
            calls = list(trace.calls(param))
            shown_input = calls[-1].prompt if calls else to_text(row.input)
            shown_output = calls[-1].reply if calls else to_text(row.output)
            if row.error is not None:
                told = f"The call failed: {row.error}"
            elif self.feedback is not None:
                told = self.feedback(row.output, row.target)
            elif row.score >= 1:
                told = "Correct."
            else:
                told = f"Wrong. The expected answer is: {to_text(row.target)}"
            lines += [
                f"<EXAMPLE {number}>",
                f"Input: {shown_input}",
                f"Output: {shown_output}",
                f"Feedback: {told}",
                f"</EXAMPLE {number}>",
            ]
        lines += ["", _ASK]
        return "\n".join(lines)

    def _load(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self.components[name].value = value

    def _save(self, state: SearchState) -> None:
        if self._store is not None:
            self._store.save(state)
