"""The Loss base and the plumbing every loss family shares.

A loss returns a :class:`~plait.feedback.Feedback`: its text says what is
wrong with the output (empty when nothing is) and ``score`` rates it from 0
to 1, higher being better (None when the judge gave no score).

A loss works two ways. Called directly, ``await loss_fn(output, target)``
runs on the engine and the feedback remembers the forward record(s) that
``output`` carries, so ``await loss.backward()`` can walk them; a list of
training-mode outputs (a mini-batch) gives one feedback for the batch. Called
inside a traced training step, ``loss = await step(x, target)``, its LLM calls
become nodes of the step's graph and run with the pipeline's. Either way the
loss's last node passes feedback only to the output it judged, never to the
judge's own calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from statistics import fmean
from typing import Any

from plait.errors import ConfigError
from plait.execution.call import Call
from plait.feedback import BackwardContext, BackwardResult, Feedback, FeedbackTarget, text_feedback
from plait.module import Module
from plait.tracing.context import current_tracer
from plait.values import Value, ValueKind, to_text, unwrap


def feedback(text: str = "", score: float | None = None, **details: Any) -> Feedback:
    """A Feedback; return one from the ``forward`` of a custom loss."""
    return text_feedback(text, score, **details)


class Loss(Module):
    """Base of every loss: ``await loss_fn(output, target=None)`` returns feedback.

    Subclasses write ``forward(output, target=None)`` returning
    :func:`feedback`. Without child modules, ``forward`` runs on real values
    (it may be ``async``); with children (say an ``LLMInference`` judge) it is
    traced like any pipeline.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_tracer() is not None:
            return super().__call__(*args, **kwargs)
        return self._judge(*args, **kwargs)

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        """A loss that runs as one node sends its feedback to the judged output only."""
        return BackwardResult(inputs={0: feedback})

    async def _judge(self, output: Any, target: Any = None) -> Feedback:
        if _is_batch(output):
            targets = _batch_targets(target, len(output))
            items = [_arguments(out, tgt) for out, tgt in zip(output, targets, strict=True)]
            results = await Call.for_batch(self, items, self._settings(output))
            values = [_as_feedback(result) for result in results]
            return _batch_feedback(output, values)
        args, kwargs = _arguments(output, target)
        value = _as_feedback(await Call.single(self, args, kwargs, self._settings([output])))
        value.targets = _targets([output], [value.payload], [value.score])
        return value

    def _settings(self, outputs: Sequence[Any]) -> dict[str, Any]:
        """Run on the loss's own resources (bound or from ExecutionSettings), else the forward's."""
        if self.resolved_settings().resources is None:
            for output in outputs:
                record = output.record if isinstance(output, Value) else None
                if record is not None and record.resources is not None:
                    return {"resources": record.resources}
        return {}


class _Verdict(Module):
    """The last node of an LLM loss: builds the feedback, routes it to the judged output."""

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        return BackwardResult(inputs={0: feedback})


def _as_model(reply: Any, model: type[Any]) -> Any:
    """A judge's structured reply as ``model``, whatever form the engine handed over."""
    payload = reply.payload if isinstance(reply, Value) else reply
    if isinstance(payload, model):
        return payload
    if isinstance(payload, str):
        return model.model_validate_json(payload)
    return model.model_validate(payload)


def _is_batch(output: Any) -> bool:
    return isinstance(output, list) and bool(output) and all(isinstance(o, Value) for o in output)


def _batch_targets(target: Any, count: int) -> list[Any]:
    if target is None:
        return [None] * count
    if not isinstance(target, list | tuple) or len(target) != count:
        raise ConfigError(
            f"a batch of {count} outputs needs a list of {count} targets (or None), got "
            f"{type(target).__name__}"
            + (f" of length {len(target)}" if isinstance(target, list | tuple) else "")
        )
    return list(target)


def _arguments(output: Any, target: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if target is None:
        return (unwrap(output),), {}
    return (unwrap(output), unwrap(target)), {}


def _as_feedback(result: Any) -> Feedback:
    """The loss graph's output as a fresh Feedback, without the record of the loss's own run.

    A Feedback keeps its class, so a family's own fields (a rubric's grades,
    a composite's parts) reach the caller.
    """
    if isinstance(result, Feedback):
        return replace(
            result,
            kind=ValueKind.TEXT,
            payload=to_text(result.payload),
            ref=None,
            meta=dict(result.meta),
            record=None,
            targets=(),
        )
    if isinstance(result, Value):
        return text_feedback(to_text(result.payload), None, **result.meta)
    return feedback(to_text(result))


def _targets(
    outputs: Sequence[Any], texts: Sequence[str], scores: Sequence[float | None]
) -> tuple[FeedbackTarget, ...]:
    return tuple(
        FeedbackTarget(output.record, text, score)
        for output, text, score in zip(outputs, texts, scores, strict=True)
        if isinstance(output, Value) and output.record is not None
    )


def _batch_feedback(outputs: list[Value], values: list[Feedback]) -> Feedback:
    scores = [value.score for value in values if value.score is not None]
    texts = [f"Example {index}: {value}" for index, value in enumerate(values, 1) if str(value)]
    batch = text_feedback(
        "\n\n".join(texts),
        fmean(scores) if scores else None,
        _targets(outputs, [str(value) for value in values], [value.score for value in values]),
    )
    batch.items = tuple(values)
    return batch
