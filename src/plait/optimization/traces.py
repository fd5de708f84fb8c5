"""Traced runs: a module scored on a few examples, keeping what each call saw and said.

Both learning optimizers need more than a score per example. The demo
optimizer turns a passing run into demonstrations, so it needs the prompt
each ``LLMInference`` received and the reply it gave; the reflective one
shows those to its model next to the feedback. A training-mode run records
exactly that for every node (the forward record), so a traced run is an
ordinary batch in training mode, scored like an evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plait.execution.results import BatchResult
from plait.graph import ForwardRecord, NodeKind, ParameterLike
from plait.module import Module
from plait.optimization.evaluator import EvalRow, Example, Metric, score_results
from plait.values import Value, to_text

_UNTRACEABLE = ("checkpoint_dir", "checkpoint_mismatch")
"""Settings a training-mode run refuses (a restored output has no record)."""


@dataclass(frozen=True, slots=True)
class NodeCall:
    """What one LLM call of a traced run received (its prompt) and answered."""

    node_id: str
    prompt: str
    reply: str
    is_output: bool
    """The call's reply is the module's output, so the target is what it should have said."""


@dataclass(frozen=True, slots=True)
class Trace:
    """One example's row and the record of the forward pass that produced it."""

    row: EvalRow
    record: ForwardRecord | None

    def calls(self, param: ParameterLike) -> Iterator[NodeCall]:
        """The LLM calls of this run that used ``param``, in graph order."""
        record = self.record
        if record is None:
            return
        graph = record.graph
        for node_id in graph.topological_order():
            node = graph.nodes[node_id]
            if node.kind is not NodeKind.LLM or node_id not in record.node_inputs:
                continue
            if not any(used is param for used in node.parameters):
                continue
            args, kwargs = record.node_inputs[node_id]
            prompt = args[0] if args else next(iter(kwargs.values()), "")
            yield NodeCall(
                node_id,
                to_text(prompt),
                to_text(record.node_outputs.get(node_id, "")),
                node_id in graph.output_ids,
            )


async def run_traced(
    module: Module, examples: Sequence[Example], metric: Metric, settings: Mapping[str, Any]
) -> list[Trace]:
    """Run ``module`` in training mode on ``examples``; one scored Trace per example."""
    options = {key: value for key, value in settings.items() if key not in _UNTRACEABLE}
    was_training = module.training
    module.train()
    try:
        results: list[BatchResult] = await module.batch(
            [inputs for inputs, _ in examples], **{**options, "streaming": True}
        )
    finally:
        module.train(was_training)
    records = {
        result.index: result.output.record if isinstance(result.output, Value) else None
        for result in results
    }
    rows = await score_results(results, examples, metric)
    return [Trace(row, records.get(row.index)) for row in rows]
