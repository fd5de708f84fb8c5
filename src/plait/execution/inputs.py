"""Batch inputs as (args, kwargs) pairs, and back to the form the caller wrote.

The engine only ever sees pairs, so one code path serves a single call, a
list, a generator and an async iterable. Normalising is lazy for anything
without a length: a generator of a million inputs is pulled one at a time
as room in flight opens up, never held in memory at once.

A list is the one argument whose meaning is ambiguous: a list of inputs is a
batch, but a list of chat messages is one conversation (DESIGN 11). It is a
conversation only when every element is a chat message; a list that mixes
messages with anything else is refused before any request, naming the items,
because either reading of it would send something the caller did not mean.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sized
from typing import Any

from plait.errors import ConfigError

Item = tuple[tuple[Any, ...], dict[str, Any]]

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

_SHAPES = (
    "a conversation is a list of chat messages only ({'role': ..., 'content': ...}), "
    "a batch is a list of inputs, and a batch of conversations is a list of such lists"
)


def call_items(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, where: str
) -> Iterable[Item] | AsyncIterable[Item] | None:
    """The batch a call's arguments stand for, or None when they are one input.

    The only positional argument is a batch when it is a list (that is not
    one conversation), an iterator such as a generator, or an async
    iterable; each element is then one argument, as written. A generator's
    repr is never a prompt anyone meant to send.
    """
    if len(args) != 1:
        return None
    given = args[0]
    if isinstance(given, list):
        if is_conversation(given, where=where) or kwargs:
            return None
        # No element is a chat message (or it would have been one conversation).
        for index, element in enumerate(given):
            if isinstance(element, list):
                is_conversation(element, where=f"{where}, input {index}")
        return [((element,), {}) for element in given]
    if isinstance(given, AsyncIterable | Iterator) and not isinstance(given, str | bytes):
        if kwargs:
            raise ConfigError(
                f"{where}: a batch (a {type(given).__name__}) cannot take keyword arguments "
                f"{sorted(kwargs)}; pass them per input with .batch([{{...}}, ...])"
            )
        return _lazily(given, where, unpack=False)
    return None


def check_one_input(args: tuple[Any, ...], module: Any, place: str) -> None:
    """Refuse arguments that cannot be one input of a call inside a dynamic forward.

    There a call is one input whatever it is given, so a list is one
    argument; an iterator cannot be, and a list that half looks like a
    conversation is as ambiguous as it is anywhere else. ``module`` and
    ``place`` name the call in the error (formatted only then: this runs on
    every call a dynamic forward makes).
    """
    if not args:
        return
    given = args[0]
    if isinstance(given, list):
        if given:
            is_conversation(given, where=f"{type(module).__name__}(...) in {place}")
    elif isinstance(given, AsyncIterable | Iterator) and not isinstance(given, str | bytes):
        raise ConfigError(
            f"{type(module).__name__}(...) in {place}: got a {type(given).__name__}, which "
            "a call inside a dynamic forward cannot send as one input; run one call per "
            "item with `await F.map(module, items)` or asyncio.gather"
        )


def batch_items(inputs: Any, *, where: str = "batch()") -> Iterable[Item] | AsyncIterable[Item]:
    """Normalise ``module.batch`` inputs into (args, kwargs) pairs, lazily."""
    if isinstance(inputs, AsyncIterable):
        return _lazily(inputs, where, unpack=True)
    if isinstance(inputs, str | bytes | dict) or not isinstance(inputs, Iterable):
        raise TypeError(
            f"batch() needs a list or (async) iterable of inputs, got {type(inputs).__name__}"
        )
    given: Iterable[Any] = inputs
    if isinstance(inputs, Sized):
        return [_unpacked(index, element, where) for index, element in enumerate(given)]
    return _lazily(iter(given), where, unpack=True)


def is_conversation(items: list[Any], *, where: str) -> bool:
    """Whether ``items`` is one conversation; ConfigError if it half looks like one."""
    messages = [_message(item) for item in items]
    others = [position for position, message in enumerate(messages) if message is None]
    if len(others) == len(items):
        return False
    if others:
        found = [position for position, message in enumerate(messages) if message is not None]
        shown = ", ".join(f"item {position} is {_describe(items[position])}" for position in others)
        raise ConfigError(
            f"{where}: a list mixes chat messages (items {_span(found)}) with other "
            f"values ({shown[:400]}); {_SHAPES}"
        )
    for position, message in enumerate(messages):
        _check_message(position, message or {}, where)
    return True


def as_given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The input as the caller wrote it, for ``BatchResult.input`` (undoes ``_unpacked``)."""
    if not kwargs:
        return args[0] if len(args) == 1 else args
    return kwargs if not args else (args, kwargs)


def _one_argument(index: int, element: Any, where: str) -> Item:
    """A batch element passed as the single argument (a call's list or iterator)."""
    _check_element(index, element, where)
    return (element,), {}


def _unpacked(index: int, element: Any, where: str) -> Item:
    """A ``.batch`` element: a tuple is the positional arguments, a dict the keywords."""
    _check_element(index, element, where)
    if isinstance(element, tuple):
        return element, {}
    if isinstance(element, dict):
        return (), element
    return (element,), {}


def _check_element(index: int, element: Any, where: str) -> None:
    """Refuse a batch element that is a conversation gone wrong.

    A lone dict is flagged only when it is plainly a chat message (a chat
    role and a ``content``): ``.batch`` takes dicts as keyword arguments,
    and a ``role=`` keyword of the caller's own is no mistake.
    """
    if isinstance(element, list):
        is_conversation(element, where=f"{where}, input {index}")
        return
    message = _message(element)
    if message is not None and message.get("role") in CHAT_ROLES and "content" in message:
        raise ConfigError(
            f"{where}: input {index} of the batch is a single chat message; a "
            "conversation is one input, so pass its messages as a list: "
            "module(messages) for one, module([messages, ...]) for a batch"
        )


async def _async_items(inputs: AsyncIterable[Any], where: str, unpack: bool) -> AsyncIterator[Item]:
    index = 0
    async for element in inputs:
        yield _unpacked(index, element, where) if unpack else _one_argument(index, element, where)
        index += 1


def _sync_items(inputs: Iterator[Any], where: str, unpack: bool) -> Iterator[Item]:
    for index, element in enumerate(inputs):
        yield _unpacked(index, element, where) if unpack else _one_argument(index, element, where)


def _lazily(
    inputs: AsyncIterable[Any] | Iterator[Any], where: str, *, unpack: bool
) -> Iterable[Item] | AsyncIterable[Item]:
    if isinstance(inputs, AsyncIterable):
        return _async_items(inputs, where, unpack)
    return _sync_items(inputs, where, unpack)


def _message(item: Any) -> Mapping[str, Any] | None:
    """``item`` as a chat message, or None: a mapping with a ``role``, or an
    object whose ``to_message()`` gives one (an ``AssistantMessage``)."""
    if isinstance(item, Mapping):
        return item if "role" in item else None
    to_message = getattr(item, "to_message", None)
    if callable(to_message) and not isinstance(item, type):
        message = to_message()
        if isinstance(message, Mapping) and "role" in message:
            return message
    return None


def _check_message(position: int, message: Mapping[str, Any], where: str) -> None:
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise ConfigError(
            f"{where}: message {position} has role {role!r}; chat roles are "
            f"{', '.join(sorted(CHAT_ROLES))} (to pass dicts that are not chat messages "
            "as a batch, use module.batch([(d,) for d in dicts]))"
        )
    if "content" not in message and not (role == "assistant" and message.get("tool_calls")):
        raise ConfigError(
            f"{where}: message {position} (role {role!r}) has no 'content'; "
            "a chat message is {'role': ..., 'content': ...}"
        )


def _describe(item: Any) -> str:
    if isinstance(item, Mapping):
        return "a dict without 'role'"
    name = type(item).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _span(positions: list[int]) -> str:
    shown = ", ".join(map(str, positions[:10]))
    return shown + (", ..." if len(positions) > 10 else "")
