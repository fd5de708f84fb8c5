"""Which tracer, if any, is recording right now.

A context variable rather than a global, so that tracing in one asyncio task or
thread never leaks into code running concurrently elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plait.tracing.tracer import Tracer

_current: ContextVar[Tracer | None] = ContextVar("plait_tracer", default=None)


def current_tracer() -> Tracer | None:
    """The tracer recording in this context, or None outside tracing."""
    return _current.get()


@contextmanager
def tracing(tracer: Tracer) -> Iterator[Tracer]:
    token = _current.set(tracer)
    try:
        yield tracer
    finally:
        _current.reset(token)
