"""Values: data plus the provenance that lets plait wire a graph.

A :class:`Value` is how plait talks about data at its edges: inputs handed to a
run, outputs a node produced, feedback a loss wrote. ``ref`` names the graph
node that produced it, so anything built from Values can be traced back to its
sources. The helpers here convert between plain Python data and Values and
find refs inside nested containers, which is how the tracer and the optimizer
learn what depends on what.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from plait.errors import BackwardError
from plait.graph import ForwardRecord


class ValueKind(enum.StrEnum):
    """What a Value's payload is, so consumers can pick a rendering without probing."""

    TEXT = "text"
    STRUCTURED = "structured"
    RESPONSE = "response"
    INT = "int"
    FLOAT = "float"
    ERROR = "error"
    BINARY = "binary"
    OTHER = "other"


@dataclass(slots=True)
class Value:
    """A payload with its kind, the id of the node that made it, and free-form metadata.

    ``record`` is set on a training-mode output: the forward pass that made
    it, which a loss and ``backward()`` follow. A Value never holds another
    Value: wrapping one merges them, keeping the inner kind and payload (and
    the inner class, so a :class:`~plait.feedback.Feedback` stays one), the
    outer ref and record when there are any, and both metas with the outer
    keys winning.
    """

    kind: ValueKind
    payload: Any
    ref: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    record: ForwardRecord | None = None

    def __post_init__(self) -> None:
        inner = self.payload
        if isinstance(inner, Value):
            self.kind = inner.kind
            self.payload = inner.payload
            self.ref = self.ref if self.ref is not None else inner.ref
            self.meta = {**inner.meta, **self.meta}
            self.record = self.record if self.record is not None else inner.record

    def __str__(self) -> str:
        return to_text(self.payload)

    @property
    def is_error(self) -> bool:
        return self.kind is ValueKind.ERROR

    async def backward(
        self,
        *,
        alias: str = "optimizer",
        resources: Any = None,
        retain_record: bool = False,
    ) -> None:
        """Only feedback can be sent backward; a plain output says what to do instead.

        :class:`~plait.feedback.Feedback` overrides this with the real walk.
        """
        raise not_feedback(self)


def not_feedback(value: Value) -> BackwardError:
    """Why ``value`` cannot be sent backward: it has no record, or it is not feedback."""
    if value.record is None:
        return BackwardError(
            "this value carries no forward record: call module.train() before the forward "
            "pass and compute the loss on its output (or inside the traced step)"
        )
    return BackwardError(
        "backward() was called on a pipeline output, not on feedback: compute a loss on "
        "it first (loss = await loss_fn(output, target)) and call loss.backward()"
    )


def with_record(output: Any, ref: str | None, record: ForwardRecord) -> Value:
    """``output`` as a Value carrying ``record``, keeping its class when it is a Value."""
    if isinstance(output, Value):
        return replace(output, ref=ref if ref is not None else output.ref, record=record)
    return Value(kind_of(output), output, ref, record=record)


def kind_of(payload: Any) -> ValueKind:
    """Classify a plain payload; ``bool`` counts as int, as it does in Python."""
    if isinstance(payload, str):
        return ValueKind.TEXT
    if isinstance(payload, BaseException):
        return ValueKind.ERROR
    if isinstance(payload, int):
        return ValueKind.INT
    if isinstance(payload, float):
        return ValueKind.FLOAT
    if isinstance(payload, bytes | bytearray | memoryview):
        return ValueKind.BINARY
    if isinstance(payload, BaseModel | dict | list | tuple):
        return ValueKind.STRUCTURED
    return ValueKind.OTHER


def wrap(obj: Any, ref: str | None = None, **meta: Any) -> Value:
    """Turn plain data into a Value; an existing Value passes through untouched."""
    if isinstance(obj, Value):
        return obj
    return Value(kind_of(obj), obj, ref, dict(meta))


def unwrap(obj: Any) -> Any:
    """Replace every Value inside ``obj`` (lists, tuples and dicts included) by its payload."""
    if isinstance(obj, Value):
        return obj.payload
    if isinstance(obj, list):
        return [unwrap(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(unwrap(item) for item in obj)
    if isinstance(obj, dict):
        return {key: unwrap(item) for key, item in obj.items()}
    return obj


def iter_values(obj: Any) -> Iterator[Value]:
    """Yield every Value found inside nested lists, tuples and dicts, depth first."""
    if isinstance(obj, Value):
        yield obj
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from iter_values(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_values(item)


def collect_refs(obj: Any) -> list[str]:
    """The refs of every Value inside ``obj``, in first-seen order, without repeats."""
    return list(dict.fromkeys(value.ref for value in iter_values(obj) if value.ref is not None))


def to_text(payload: Any) -> str:
    """Render a payload as the text a prompt should contain.

    Structured payloads become JSON rather than their Python repr, because the
    reader of a composed prompt is a model, not a Python programmer.
    """
    if isinstance(payload, str):
        return payload
    if isinstance(payload, Value):
        return to_text(payload.payload)
    if isinstance(payload, BaseModel):
        return payload.model_dump_json()
    if isinstance(payload, dict | list | tuple):
        return json.dumps(payload, ensure_ascii=False, default=jsonable)
    return str(payload)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data, for a reader (a prompt, a results file).

    Values become their payloads and models their fields; anything JSON has
    no type for becomes its ``str``, so this never fails and never
    round-trips. Checkpoints need the opposite (strict and reversible), which
    is :func:`plait.storage.codec.to_json`.
    """
    if isinstance(value, Value):
        return jsonable(value.payload)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
