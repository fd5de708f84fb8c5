"""Optimizers: turn the feedback accumulated on Parameters into new values.

``FeedbackOptimizer.step()`` asks an LLM, for each learnable Parameter that
has feedback, to condense that feedback and rewrite the value, guided by the
Parameter's description. Parameters that feed others are rewritten first,
and the prompts for the later ones show the new upstream values. Every value
a parameter has had is kept with the score its outputs got, so a rewrite
that would bring back a value that did worse is refused, and so is a reply
that is no value at all (empty, the prompt pasted back, tags left in: see
:mod:`plait.optimization.proposals`). Demonstrations (:class:`~plait.demos.Demos`)
are chosen by the DemoOptimizer, never rewritten as text here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Self

from plait.demos import Demos
from plait.errors import ConfigError
from plait.execution.ask import TextLLM
from plait.execution.settings import resolve_settings
from plait.execution.tasks import task_group
from plait.markup import quoted, tagged, without_tag
from plait.optimization.proposals import normalise, rejection
from plait.parameter import Parameter
from plait.resources.protocol import as_resource_manager
from plait.resources.tokens import text_tokens

UPDATE_SYSTEM = (
    "You improve one piece of text used by a pipeline of language-model calls, based on "
    "feedback about the outputs it produced. Keep what works, change what the feedback asks "
    "for, and keep the text's purpose."
)
UPDATE_HEADER = "Optimizer: rewrite a text used by an LLM pipeline."
CONDENSE_SYSTEM = "You condense feedback into the distinct changes it asks for."
CONDENSE_HEADER = "Optimizer: condense feedback."
"""First lines of the optimizer's prompts; they also let scripted replies recognise them."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A value a parameter had and the mean score of the outputs judged while it had it."""

    value: str
    score: float | None


@dataclass(frozen=True, slots=True)
class ParameterUpdate:
    """What one ``step`` did to one parameter."""

    parameter: Parameter
    old: str
    new: str
    score: float | None
    applied: bool
    reason: str
    summary: str | None = None
    """The optimizer model's summary of the feedback, when it gave one."""


class Optimizer(abc.ABC):
    """Base class: holds the parameters; ``step`` is for subclasses to write."""

    def __init__(self, params: Iterable[Parameter]) -> None:
        unique: dict[int, Parameter] = {}
        for param in params:
            if not isinstance(param, Parameter):
                raise ConfigError(
                    f"{type(self).__name__} takes Parameters (e.g. module.parameters()), "
                    f"got {type(param).__name__}"
                )
            unique.setdefault(id(param), param)
        if not unique:
            raise ConfigError(f"{type(self).__name__} got no parameters to optimize")
        self.params: list[Parameter] = list(unique.values())

    def zero_feedback(self) -> None:
        """Forget every parameter's accumulated feedback (call before each mini-batch)."""
        for param in self.params:
            param.zero_feedback()

    @abc.abstractmethod
    async def step(self) -> list[ParameterUpdate]:
        """Update the parameters from their accumulated feedback."""


class FeedbackOptimizer(Optimizer):
    """Rewrites learnable parameters from their feedback with an LLM.

    Args:
        params: the parameters to optimize; ``requires_grad=False`` ones are
            never changed.
        alias: the endpoint pool the optimizer's LLM calls use.
        resources: where ``alias`` lives; else ``bind()``'s, else the
            enclosing ``ExecutionSettings``'.
        temperature: sent with the optimizer's calls (None: the model's default).
        max_prompt_tokens: the optimizer model's prompt budget. Feedback that
            would overflow it is condensed in chunks first.
        history_size: how many earlier values (with scores) a prompt shows.
        count_tokens: how to count a prompt's tokens (default: plait's
            four-characters-per-token estimate).
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        alias: str = "optimizer",
        resources: Any = None,
        *,
        temperature: float | None = None,
        max_prompt_tokens: int = 8000,
        history_size: int = 5,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        super().__init__(params)
        if not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
            raise ConfigError(
                f"max_prompt_tokens must be a positive int, got {max_prompt_tokens!r}"
            )
        if not isinstance(history_size, int) or history_size < 0:
            raise ConfigError(f"history_size must be an int >= 0, got {history_size!r}")
        self.alias = alias
        self.resources = None if resources is None else as_resource_manager(resources)
        self.temperature = temperature
        self.max_prompt_tokens = max_prompt_tokens
        self.history_size = history_size
        self.count_tokens = count_tokens or text_tokens
        self.history: dict[Parameter, list[HistoryEntry]] = {}

    def bind(self, resources: Any) -> Self:
        """Use ``resources`` for the optimizer's LLM calls; returns ``self``."""
        self.resources = as_resource_manager(resources)
        return self

    async def step(self) -> list[ParameterUpdate]:
        """Rewrite every learnable parameter that has feedback, upstream ones first.

        Parameters on one stage (none upstream of another) are rewritten
        concurrently. Afterwards every learnable parameter's feedback is cleared.
        """
        resources = self.resources or resolve_settings().resources
        llm = TextLLM(
            self.alias,
            resources,
            temperature=self.temperature,
            purpose="the optimizer",
            advice="pass resources=... to FeedbackOptimizer, call optimizer.bind(resources), "
            "or run step() inside ExecutionSettings(resources=...)",
        )
        todo = [
            param
            for param in self.params
            if param.requires_grad and param.feedback and not isinstance(param, Demos)
        ]
        updates: list[ParameterUpdate] = []
        for stage in _stages(todo):
            async with task_group() as group:
                tasks = [group.create_task(self._update(param, llm)) for param in stage]
            updates += [task.result() for task in tasks]
        for param in self.params:
            if param.requires_grad:
                param.zero_feedback()
        return updates

    async def _update(self, param: Parameter, llm: TextLLM) -> ParameterUpdate:
        old = param.value
        score = fmean(param.scores) if param.scores else None
        history = self.history.setdefault(param, [])
        history.append(HistoryEntry(old, score))
        context = self._context(param)
        fixed = self.count_tokens(_update_prompt(param, context, []))
        if fixed >= self.max_prompt_tokens:
            raise ConfigError(
                f"max_prompt_tokens={self.max_prompt_tokens} leaves no room for feedback on "
                f"the parameter described as {param.description!r} (its prompt alone takes "
                f"about {fixed} tokens)"
            )
        notes = await self._fit(param, context, list(param.feedback), llm)
        prompt = _update_prompt(param, context, notes)
        reply = await llm(prompt, system=UPDATE_SYSTEM)
        summary = tagged(reply, "SUMMARY")
        new = tagged(reply, "VALUE")
        if new is None:
            new = without_tag(reply, "SUMMARY")
        if not new or new == old:
            return ParameterUpdate(param, old, old, score, False, "unchanged", summary)
        invalid = rejection(new, old, prompt, scaffold=(UPDATE_HEADER, UPDATE_SYSTEM, _ASK))
        if invalid is not None:
            return ParameterUpdate(param, old, new, score, False, f"rejected: {invalid}", summary)
        worse = self._scored_worse(param, new, score)
        if worse is not None:
            reason = f"rejected: a value like it scored {worse:.2f}"
            return ParameterUpdate(param, old, new, score, False, reason, summary)
        param.apply_update(new)
        return ParameterUpdate(param, old, new, score, True, "updated", summary)

    def _context(self, param: Parameter) -> list[str]:
        """Prompt sections about upstream values and earlier attempts."""
        sections: list[str] = []
        if param.upstream:
            sections += [
                "<UPSTREAM>",
                "Texts used earlier in the pipeline, as they are now:",
                *(f"- {p.description or 'fixed text'}: {quoted(p.value)}" for p in param.upstream),
                "</UPSTREAM>",
            ]
        tried = _by_value(self.history.get(param, []))
        if len(tried) > 1 and self.history_size:
            sections += [
                "<HISTORY>",
                "Values this text has had and the mean score of their outputs (0 to 1, higher "
                "is better). Do not go back to a value that scored worse than the current one.",
                *(
                    f"- score {'n/a' if s is None else f'{s:.2f}'}: {quoted(value)}"
                    for value, s in list(tried.items())[-self.history_size :]
                ),
                "</HISTORY>",
            ]
        return sections

    def _scored_worse(self, param: Parameter, new: str, current: float | None) -> float | None:
        """The score of an earlier value like ``new`` if it did worse than ``current``."""
        if current is None:
            return None
        target = normalise(new)
        for value, score in _by_value(self.history.get(param, [])).items():
            if normalise(value) == target and score is not None and score < current:
                return score
        return None

    async def _fit(
        self, param: Parameter, context: list[str], notes: list[str], llm: TextLLM
    ) -> list[str]:
        """Shrink ``notes`` until the update prompt fits the budget, condensing by LLM.

        Notes are condensed in chunks that each fit the budget, concurrently,
        round after round. A round that fails to shrink them (a model that
        repeats itself) ends in truncation, so the step always finishes.
        """

        budget = self.max_prompt_tokens

        def fits(found: list[str]) -> bool:
            return self.count_tokens(_update_prompt(param, context, found)) <= budget

        def condensable(chunk: list[str]) -> bool:
            return self.count_tokens(_condense_prompt(param, chunk)) <= budget

        while not fits(notes):
            if not condensable([""]):
                return _truncate(notes, fits)
            chunks = _chunks(notes, condensable)
            prompts = [_condense_prompt(param, chunk) for chunk in chunks]
            async with task_group() as group:
                asked = [
                    group.create_task(llm(prompt, system=CONDENSE_SYSTEM)) for prompt in prompts
                ]
            replies = [task.result() for task in asked]
            condensed = [tagged(reply, "SUMMARY") or reply.strip() for reply in replies]
            if self.count_tokens("\n".join(condensed)) >= self.count_tokens("\n".join(notes)):
                return _truncate(condensed, fits)
            notes = condensed
        return notes


def _chunks(notes: list[str], fits: Callable[[list[str]], bool]) -> list[list[str]]:
    """Consecutive groups of notes that each pass ``fits``; a note too big alone is cut."""
    chunks: list[list[str]] = [[]]
    for note in notes:
        if not fits([note]):
            note = (_truncate([note], fits) or [""])[0]
        if chunks[-1] and not fits([*chunks[-1], note]):
            chunks.append([])
        chunks[-1].append(note)
    return chunks


def _truncate(notes: list[str], fits: Callable[[list[str]], bool]) -> list[str]:
    """Cut every note by the same share until ``fits`` passes; drop notes as a last resort."""
    cut = list(notes)
    while cut and not fits(cut):
        if all(len(note) <= 1 for note in cut):
            cut.pop()
        else:
            cut = [note[: int(len(note) * 0.8)] for note in cut]
    return cut


def _update_prompt(param: Parameter, context: list[str], notes: list[str]) -> str:
    lines = [
        UPDATE_HEADER,
        "",
        f"<PURPOSE>{param.description}</PURPOSE>",
        "<CURRENT_VALUE>",
        param.value,
        "</CURRENT_VALUE>",
        *context,
        "<FEEDBACK>",
        *(f"[{index}] {note}" for index, note in enumerate(notes, 1)),
        "</FEEDBACK>",
        _ASK,
    ]
    return "\n".join(lines)


_ASK = (
    "Summarise what the feedback asks for inside <SUMMARY></SUMMARY>, then write the "
    "complete new text inside <VALUE></VALUE>."
)


def _condense_prompt(param: Parameter, notes: list[str]) -> str:
    lines = [
        CONDENSE_HEADER,
        f"The feedback is about a text used in an LLM pipeline. Its purpose: {param.description}",
        "<FEEDBACK>",
        *(f"[{index}] {note}" for index, note in enumerate(notes, 1)),
        "</FEEDBACK>",
        "List the distinct changes it asks for, briefly: keep every concrete request, merge "
        "repeats, drop praise. Answer inside <SUMMARY></SUMMARY>.",
    ]
    return "\n".join(lines)


def _stages(params: list[Parameter]) -> list[list[Parameter]]:
    """Group parameters so that each comes after every parameter upstream of it.

    Links come from the backward pass (``Parameter.upstream``). A cycle
    (possible when feedback came from different graphs) is broken in the
    order the parameters were given.
    """
    pending = {id(param): param for param in params}
    stages: list[list[Parameter]] = []
    while pending:
        ready = [
            param
            for param in pending.values()
            if not any(id(up) in pending for up in param.upstream)
        ]
        if not ready:
            ready = [next(iter(pending.values()))]
        stages.append(ready)
        for param in ready:
            del pending[id(param)]
    return stages


def _by_value(entries: list[HistoryEntry]) -> dict[str, float | None]:
    """Each distinct value (in first-tried order) with the mean of its known scores."""
    scores: dict[str, list[float]] = {}
    values: dict[str, str] = {}
    for entry in entries:
        key = normalise(entry.value)
        values.setdefault(key, entry.value)
        bucket = scores.setdefault(key, [])
        if entry.score is not None:
            bucket.append(entry.score)
    return {values[key]: (fmean(found) if found else None) for key, found in scores.items()}
