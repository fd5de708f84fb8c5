"""Batch inputs as (args, kwargs) pairs, and back to the form the caller wrote.

The engine only ever sees pairs, so one code path serves a single call, a
list, a generator and an async iterable. Normalising is lazy for anything
without a length: a generator of a million inputs is pulled one at a time
as room in flight opens up, never held in memory at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sized
from typing import Any

Item = tuple[tuple[Any, ...], dict[str, Any]]


def batch_items(inputs: Any) -> Iterable[Item] | AsyncIterable[Item]:
    """Normalise ``module.batch`` inputs into (args, kwargs) pairs, lazily."""
    if isinstance(inputs, AsyncIterable):
        return _async_items(inputs)
    if isinstance(inputs, str | bytes | dict) or not isinstance(inputs, Iterable):
        raise TypeError(
            f"batch() needs a list or (async) iterable of inputs, got {type(inputs).__name__}"
        )
    items = (_as_item(element) for element in inputs)
    return list(items) if isinstance(inputs, Sized) else items


async def _async_items(inputs: AsyncIterable[Any]) -> AsyncIterator[Item]:
    async for element in inputs:
        yield _as_item(element)


def as_given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The input as the caller wrote it, for ``BatchResult.input`` (undoes ``_as_item``)."""
    if not kwargs:
        return args[0] if len(args) == 1 else args
    return kwargs if not args else (args, kwargs)


def _as_item(element: Any) -> Item:
    if isinstance(element, tuple):
        return element, {}
    if isinstance(element, dict):
        return (), element
    return (element,), {}
