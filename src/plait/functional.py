"""Stateless, graph-aware operations, conventionally imported as ``F``.

Inside a traced ``forward`` each call records a node whose work happens at run
time on real values; outside tracing it runs at once. Use these where plain
Python would need a traced value's contents (selecting a field, joining texts,
parsing JSON). :func:`map` is the one op for dynamic (``async def``) forwards:
it fans a module out over a list that exists only at run time.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from plait.errors import TracingError
from plait.parameter import Parameter
from plait.tracing.context import current_tracer
from plait.tracing.ops import Concat, Format, Op, ParseStructured, Render, Select
from plait.values import Value

__all__ = ["concat", "format", "map", "parse_structured", "render", "select"]


def _apply(op: Op, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    tracer = current_tracer()
    if tracer is not None:
        return tracer.record(op, args, kwargs, name=name)
    return op.forward(*args, **kwargs)  # type: ignore[attr-defined]


def select(value: Any, key: Any) -> Any:
    """``value[key]`` for dicts and lists, the field ``key`` for pydantic models."""
    return _apply(Select(key), "select", (value,), {})


def concat(*parts: Any, sep: str = "") -> Any:
    """The texts of ``parts`` joined by ``sep`` (structured values render as JSON)."""
    return _apply(Concat(sep), "concat", parts, {})


def format(template: str | Parameter, *args: Any, **kwargs: Any) -> Any:
    """``template.format(...)`` with the texts of the arguments, plain fields only.

    A Parameter template is read when the op runs, so an optimizer may rewrite it;
    the template may also be a model's reply. Either way it is data, so only
    ``{name}``, ``{0}`` and ``{}`` fields are filled: a format spec, a
    conversion or an attribute lookup raises :class:`~plait.errors.TemplateError`,
    as does a result longer than ``MAX_TEMPLATE_OUTPUT`` characters. (An
    ``str.format`` call on a literal in a traced ``forward`` is untouched.)
    """
    return _apply(Format(), "format", (template, *args), kwargs)


def render(template: str | Parameter, **values: Any) -> Any:
    """Fill ``{name}`` fields, leaving other braces (JSON examples) untouched.

    A Parameter template is read when the op runs, so an optimizer may rewrite it.
    """
    return _apply(Render(), "render", (template,), values)


def parse_structured(text: Any, model: type[BaseModel] | None = None) -> Value | Any:
    """Parse JSON text into a structured Value, or an error Value that says why not."""
    return _apply(ParseStructured(model), "parse_structured", (text,), {})


def map(module: Any, items: Iterable[Any]) -> asyncio.Future[list[Any]]:
    """Run ``module`` on every item concurrently; await it for the outputs in item order.

    For use inside an ``async def forward``, where the number of items is known
    only from real values: every call starts at once and is scheduled with the
    input that made it, under the endpoints' limits. Each item is the module's
    single argument. An item's error is raised from the ``await`` (the other
    calls still run to the end, as with ``asyncio.gather``).
    """
    if current_tracer() is not None:
        raise TracingError(
            "F.map needs the real list of items, which does not exist while forward() is "
            "traced: use it inside an `async def forward` (a dynamic module), where "
            "`await F.map(self.child, items)` runs the calls concurrently"
        )
    calls = [module(item) for item in items]
    return asyncio.gather(*[call if inspect.isawaitable(call) else _ready(call) for call in calls])


async def _ready(value: Any) -> Any:
    """A plain module's output (outside the engine) as something gather accepts."""
    return value
