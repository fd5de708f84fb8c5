"""Which tracer, if any, is recording right now.

A context variable rather than a global, so that tracing in one asyncio task or
thread never leaks into code running concurrently elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from plait.tracing.proxy import Proxy, Selecting


class Recorder(Selecting, Protocol):
    """What code being traced may ask of the active tracer.

    Structural, so this file (imported by everything that behaves differently
    while tracing) sits below the tracer instead of importing it.
    """

    def call_module(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

    def record(
        self,
        module: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str | None = None,
    ) -> Proxy: ...

    def param_token(self, param: Any) -> str: ...


_current: ContextVar[Recorder | None] = ContextVar("plait_tracer", default=None)


def current_tracer() -> Recorder | None:
    """The tracer recording in this context, or None outside tracing."""
    return _current.get()


@contextmanager
def tracing(tracer: Recorder) -> Iterator[Recorder]:
    token = _current.set(tracer)
    try:
        yield tracer
    finally:
        _current.reset(token)
