"""The backward contract, the Feedback a loss returns, and the walk that runs it.

Feedback is text about what was wrong with an output. ``run_backward`` walks
each recorded forward pass from its output towards its inputs; every node
with feedback on its output has its module's ``backward`` turn that into
feedback on its inputs (which flows on to the nodes that produced them) and
on the Parameters it used (which accumulates there for the optimizer).

A node that ran more than one call (a dynamic module, whose record is the tape
of the calls it made, or a traced child run as a sub-run inside one) has a
record of its own in ``ForwardRecord.subrecords``: feedback on its output is
walked through that record, and what reaches the record's inputs comes out as
the node's feedback on its inputs, so parameters used inside loops and
branches get their share, once per round. For a dynamic module that walk is
its default ``backward``: one that overrides ``backward`` decides instead,
and may still walk the tape through ``ctx.walk_inside``.

The walk lives beside the contract, below the optimizers, because
``loss.backward()`` must reach it from a Feedback without the user layer
importing the optimization layer above it.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from plait.errors import BackwardError
from plait.execution.ask import TextLLM
from plait.execution.tasks import task_group
from plait.graph import ForwardRecord, InferenceGraph, NodeKind, NodeRef, ParameterLike, Template
from plait.values import Value, ValueKind, not_feedback


class ReasoningLLM(Protocol):
    """The chat model a ``backward`` may consult: prompt in, reply text out."""

    async def __call__(self, prompt: str, *, system: str = "") -> str: ...


@dataclass(slots=True)
class BackwardContext:
    """One node's view of the forward pass: its resolved inputs, output and parameters.

    ``inputs`` maps argument positions (``0``, ``1``, ...) and keyword names to
    the values the node actually ran with; ``sources`` maps the same keys to
    the ids of the upstream nodes each input was built from (empty for the
    pipeline's own inputs and constants, where feedback has nowhere to go).
    ``llm`` answers prompts through the backward pass's endpoint, batched with
    every other node's questions at the same depth. ``record`` is what ran
    inside the node, for a dynamic module that made calls (the tape of
    them): :meth:`walk_inside` sends feedback through it, which is what the
    default ``backward`` does, so a custom one can still reach the
    parameters used inside loops and branches.
    """

    node_id: str
    inputs: dict[int | str, Any]
    output: Any
    parameters: tuple[ParameterLike, ...] = ()
    module: Any = None
    sources: dict[int | str, tuple[str, ...]] = field(default_factory=dict)
    llm: ReasoningLLM | None = None
    record: ForwardRecord | None = None

    @property
    def learnable(self) -> tuple[ParameterLike, ...]:
        """The parameters feedback may be written for (``requires_grad`` ones)."""
        return tuple(param for param in self.parameters if param.requires_grad)

    def traced_inputs(self) -> list[int | str]:
        """Input keys that came from upstream nodes, so feedback on them travels on."""
        return [key for key, found in self.sources.items() if found]

    async def ask(self, prompt: str, *, system: str = "") -> str:
        if self.llm is None:
            raise BackwardError(f"node {self.node_id!r}: this backward pass has no LLM")
        return await self.llm(prompt, system=system)

    async def walk_inside(self, feedback: str) -> BackwardResult:
        """``feedback`` on the node's output walked through the calls it made.

        Parameters inside get their share as the walk passes them; the
        result holds what reached the node's own inputs.
        """
        if self.record is None:
            raise BackwardError(
                f"node {self.node_id!r}: nothing ran inside it to walk (only a dynamic "
                "module that made calls has a record)"
            )
        if self.llm is None:
            raise BackwardError(f"node {self.node_id!r}: this backward pass has no LLM")
        return await _walk_inside(self.record, feedback, self.llm)


@dataclass(slots=True)
class BackwardResult:
    """Feedback for a node's inputs (same keys as ``BackwardContext.inputs``) and parameters."""

    inputs: dict[int | str, str] = field(default_factory=dict)
    parameters: dict[ParameterLike, str] = field(default_factory=dict)


def default_backward(
    feedback: str, ctx: BackwardContext
) -> BackwardResult | Awaitable[BackwardResult]:
    """What ``Module.backward`` does unless overridden: a dynamic module that made
    calls walks them (:meth:`BackwardContext.walk_inside`), any other module
    passes the feedback through."""
    if ctx.record is not None:
        return ctx.walk_inside(feedback)
    return pass_through(feedback, ctx)


def pass_through(feedback: str, ctx: BackwardContext) -> BackwardResult:
    """The default backward: every input and every learnable parameter gets the feedback.

    Right for modules that transform text without judgement of their own
    (selection, joining, formatting): whatever was wrong with the output was
    wrong with what went in.
    """
    return BackwardResult(
        inputs=dict.fromkeys(ctx.inputs, feedback),
        parameters=dict.fromkeys(ctx.learnable, feedback),
    )


@dataclass(slots=True)
class FeedbackTarget:
    """One recorded forward pass and the feedback (and score) on its output."""

    record: ForwardRecord
    feedback: str
    score: float | None = None


@dataclass(slots=True)
class Feedback(Value):
    """What a loss returns: text about what is wrong (empty when nothing is), a score,
    and the forward passes it judges.

    ``targets`` lists the judged passes when the loss ran on training-mode
    outputs; a loss computed inside a traced training step has none, and its
    own ``record`` (the step's forward pass) is the target instead. ``items``
    holds per-item feedback where a loss judged several outputs at once (the
    examples of a batch, the candidates of a preference loss).
    """

    score: float | None = None
    targets: tuple[FeedbackTarget, ...] = ()
    items: tuple[Feedback, ...] = ()

    async def backward(
        self,
        *,
        alias: str = "optimizer",
        resources: Any = None,
        retain_record: bool = False,
    ) -> None:
        """Send this feedback back through the forward pass(es) it judges.

        Accumulates feedback on the Parameters upstream of the judged outputs.
        ``alias`` names the endpoint the feedback-writing LLM uses;
        ``resources`` defaults to those the forward ran with, then to the
        enclosing ExecutionSettings. Records are released afterwards unless
        ``retain_record`` is true.
        """
        await run_backward([self], alias=alias, resources=resources, retain_record=retain_record)


def text_feedback(
    text: str,
    score: float | None = None,
    targets: Iterable[FeedbackTarget] = (),
    **meta: Any,
) -> Feedback:
    """Feedback text with its score, judged passes and any extra details in ``meta``."""
    return Feedback(ValueKind.TEXT, text, meta=dict(meta), score=score, targets=tuple(targets))


def feedback_targets(value: Value) -> list[FeedbackTarget]:
    """The forward passes a feedback Value judges."""
    if not isinstance(value, Value):
        raise BackwardError(f"backward needs a feedback Value from a loss, got {type(value)!r}")
    if isinstance(value, Feedback):
        if value.targets:
            return list(value.targets)
        if value.record is not None:
            return [FeedbackTarget(value.record, str(value), value.score)]
    raise not_feedback(value)


async def run_backward(
    losses: Iterable[Value],
    *,
    alias: str = "optimizer",
    resources: Any = None,
    retain_record: bool = False,
) -> None:
    """Backpropagate the feedback of every loss in ``losses`` at once.

    Nodes are visited in reverse topological order, all records together,
    one depth at a time: every node at one depth is independent of the
    others, so their LLM calls go out as one batch on the engine and run
    concurrently under the endpoint's limits. Feedback from fan-out and from
    every example of a mini-batch accumulates on each Parameter.
    """
    targets = [target for loss in losses for target in feedback_targets(loss)]
    for target in targets:
        if target.record.released:
            raise BackwardError(
                "this forward record was released by an earlier backward(); pass "
                "retain_record=True to the first backward() to walk it again"
            )
    if resources is None:
        resources = next(
            (t.record.resources for t in targets if t.record.resources is not None), None
        )
    llm = TextLLM(
        alias,
        resources,
        purpose="the backward pass",
        advice="bind the pipeline to resources that define it, pass resources=... to "
        "backward(), or run inside ExecutionSettings(resources=...)",
    )
    await _walk_levels([_Walk(target) for target in targets], llm)
    if not retain_record:
        for target in targets:
            target.record.release()


async def _walk_levels(walks: list[_Walk], llm: ReasoningLLM) -> None:
    """Walk every record one depth at a time, all of a depth's nodes concurrently."""
    depth = max((len(walk.plan.levels) for walk in walks), default=0)
    for level in range(depth):
        jobs = [
            (walk, node_id)
            for walk in walks
            if level < len(walk.plan.levels)
            for node_id in walk.plan.levels[level]
            if node_id in walk.pending
        ]
        if not jobs:
            continue
        async with task_group() as group:
            tasks = [group.create_task(walk.backward_node(node_id, llm)) for walk, node_id in jobs]
        for (walk, node_id), task in zip(jobs, tasks, strict=True):
            walk.apply(node_id, task.result())


async def _walk_inside(record: ForwardRecord, feedback: str, llm: ReasoningLLM) -> BackwardResult:
    """Feedback on a composite node's output, walked through what ran inside it.

    Parameters inside get their feedback as the walk passes them; what
    arrives at the record's inputs is the node's feedback on its own inputs.
    """
    walk = _Walk(FeedbackTarget(record, feedback), inside=True)
    await _walk_levels([walk], llm)
    inputs: dict[int | str, str] = {}
    for input_id, texts in walk.reached.items():
        name = input_id.split(":", 1)[1]
        inputs[int(name) if name.isdigit() else name] = combine_feedback(texts)
    return BackwardResult(inputs=inputs)


def combine_feedback(texts: Iterable[str]) -> str:
    """One text from several (fan-out): duplicates dropped, the rest numbered."""
    unique = list(dict.fromkeys(text.strip() for text in texts if text and text.strip()))
    if len(unique) <= 1:
        return unique[0] if unique else ""
    return "\n\n".join(f"[{index}] {text}" for index, text in enumerate(unique, 1))


class _Walk:
    """The backward state of one record: feedback waiting at each node."""

    def __init__(self, target: FeedbackTarget, *, inside: bool = False) -> None:
        self.record = target.record
        self.plan = _plan_for(target.record.graph)
        # Inside a composite node its inputs lead on (out of the node), so
        # nodes there may write feedback for them.
        self.sources = self.plan.open_sources if inside else self.plan.sources
        self.pending: dict[str, list[str]] = {}
        self.reached: dict[str, list[str]] = {}
        seeds = [nid for nid in self.plan.graph.output_ids if nid not in self.plan.inputs]
        if target.feedback.strip():
            for node_id in seeds:
                self.pending[node_id] = [target.feedback]
        if target.score is not None:
            for param in self.plan.params_feeding(seeds):
                if param.requires_grad:
                    param.record_score(target.score)

    async def backward_node(self, node_id: str, llm: ReasoningLLM) -> BackwardResult:
        node = self.plan.graph.nodes[node_id]
        feedback = combine_feedback(self.pending.pop(node_id))
        inner = self.record.subrecords.get(node_id)
        if inner is not None and node.kind is not NodeKind.DYNAMIC:
            # A traced composite run as a sub-run: walked like the inlined
            # composites of a traced graph, which have no backward of their own.
            return await _walk_inside(inner, feedback, llm)
        args, kwargs = self.record.node_inputs.get(node_id, ((), {}))
        inputs: dict[int | str, Any] = dict(enumerate(args))
        inputs.update(kwargs)
        ctx = BackwardContext(
            node_id=node_id,
            inputs=inputs,
            output=self.record.node_outputs.get(node_id),
            parameters=node.parameters,
            module=node.module,
            sources=self.sources[node_id],
            llm=llm,
            record=inner,
        )
        method = getattr(node.module, "backward", None)
        outcome: BackwardResult | Awaitable[BackwardResult] = (
            method(feedback, ctx) if callable(method) else pass_through(feedback, ctx)
        )
        result = await outcome if inspect.isawaitable(outcome) else outcome
        if not isinstance(result, BackwardResult):
            raise BackwardError(
                f"{type(node.module).__name__}.backward must return a BackwardResult, "
                f"got {type(result).__name__}"
            )
        return result

    def apply(self, node_id: str, result: BackwardResult) -> None:
        sources = self.plan.sources[node_id]
        for key, text in result.inputs.items():
            if key not in sources:
                module = type(self.plan.graph.nodes[node_id].module).__name__
                raise BackwardError(
                    f"{module}.backward wrote feedback for input {key!r} of node {node_id!r}, "
                    f"which has inputs {sorted(map(str, sources))}"
                )
            if text and text.strip():
                for source in sources[key]:
                    self.pending.setdefault(source, []).append(text)
                for source in self.plan.input_sources[node_id].get(key, ()):
                    self.reached.setdefault(source, []).append(text)
        upstream: list[ParameterLike] | None = None
        for param, text in result.parameters.items():
            if param.requires_grad and text and text.strip():
                if upstream is None:
                    upstream = [p for p in self.plan.params_above(node_id) if p.requires_grad]
                param.accumulate_feedback(text.strip(), upstream=upstream)


class _BackwardPlan:
    """Per-graph facts the walk needs, computed once per graph and kept while it lives."""

    def __init__(self, graph: InferenceGraph) -> None:
        self.graph = graph
        self.inputs = frozenset(
            nid for nid, node in graph.nodes.items() if node.kind is NodeKind.INPUT
        )
        self.sources: dict[str, dict[int | str, tuple[str, ...]]] = {}
        self.input_sources: dict[str, dict[int | str, tuple[str, ...]]] = {}
        self.open_sources: dict[str, dict[int | str, tuple[str, ...]]] = {}
        for nid, node in graph.nodes.items():
            keyed: dict[int | str, Any] = dict(enumerate(node.args))
            keyed.update(node.kwargs)
            refs = {key: _refs(spec) for key, spec in keyed.items()}
            self.sources[nid] = {
                key: tuple(ref for ref in found if ref not in self.inputs)
                for key, found in refs.items()
            }
            self.input_sources[nid] = {
                key: tuple(ref for ref in found if ref in self.inputs)
                for key, found in refs.items()
            }
            self.open_sources[nid] = {key: tuple(found) for key, found in refs.items()}
        self.levels = self._levels()
        self._above: dict[str, tuple[ParameterLike, ...]] = {}

    def _levels(self) -> list[list[str]]:
        """Non-input nodes grouped by their longest distance to a sink.

        Every dependent of a node sits at a lower level, so when a level is
        processed all feedback for it has arrived, and nodes on one level
        never depend on each other.
        """
        level: dict[str, int] = {}
        for nid in reversed(self.graph.topological_order()):
            if nid in self.inputs:
                continue
            dependents = self.graph.nodes[nid].dependents
            level[nid] = 1 + max((level[d] for d in dependents), default=-1)
        grouped: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for nid in self.graph.topological_order():
            if nid in level:
                grouped[level[nid]].append(nid)
        return grouped

    def params_above(self, node_id: str) -> tuple[ParameterLike, ...]:
        """Parameters used by the nodes ``node_id`` depends on, directly or not."""
        found = self._above.get(node_id)
        if found is None:
            nodes = self.graph.nodes
            collected = [p for nid in self.graph.ancestors(node_id) for p in nodes[nid].parameters]
            found = self._above[node_id] = tuple(dict.fromkeys(collected))
        return found

    def params_feeding(self, node_ids: Iterable[str]) -> list[ParameterLike]:
        """Parameters used by ``node_ids`` or anything upstream of them."""
        collected: list[ParameterLike] = []
        for nid in node_ids:
            collected.extend(self.graph.nodes[nid].parameters)
            collected.extend(self.params_above(nid))
        return list(dict.fromkeys(collected))


_plans: weakref.WeakKeyDictionary[InferenceGraph, _BackwardPlan] = weakref.WeakKeyDictionary()


def _plan_for(graph: InferenceGraph) -> _BackwardPlan:
    plan = _plans.get(graph)
    if plan is None:
        plan = _plans[graph] = _BackwardPlan(graph)
    return plan


def _refs(spec: Any) -> list[str]:
    """Ids of the nodes a placeholder structure refers to, in order, without repeats."""
    found: list[str] = []
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, NodeRef):
            found.append(item.id)
        elif isinstance(item, Template):
            found.extend(item.refs())
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    return list(dict.fromkeys(found))
