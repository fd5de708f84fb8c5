"""ExecutionSettings: how runs execute, scoped by ``with`` blocks.

Settings live in a context variable, so a ``with ExecutionSettings(...)`` block
applies to everything called inside it (including in tasks it spawns) and
nothing outside. Blocks nest; an inner block overrides only the fields it sets.
The full order, strongest first: call-time keywords (``run``, ``batch``), then
``bind()``, then the innermost block, then outer blocks, then the defaults.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Any, Literal, Self

from plait.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """Every setting with its effective value for one call.

    Outcomes (design_docs/execution.md): a non-streaming batch with failed
    inputs raises :class:`~plait.errors.BatchError` holding every result, or
    with ``return_exceptions`` returns the list with each failed input's
    exception in its place. The task hooks are called as
    ``on_task_complete(index, node_id, value)`` and
    ``on_task_failed(index, node_id, error)``, ``index`` being the input's.

    Durability and observability (design_docs/persistence.md and
    observability.md): ``checkpoint_dir`` keeps finished nodes and inputs on
    disk so a rerun skips them; ``checkpoint_mismatch`` says what to do when
    the directory holds results of a changed module (``"error"``, ``"new"``,
    ``"reuse"``). ``cache`` is the response cache (None/False, True, a path
    or a ResponseCache). Both group-commit their writes (no batch size or
    interval to tune) and are on disk when the call returns.
    ``max_tokens_total`` and ``max_cost`` stop the call when spent.
    ``profile`` / ``profile_path`` write a Chrome trace.

    Rate limits (design_docs/reliability.md): a node refused with 429s gives
    up with :class:`~plait.errors.RateLimitError` once it has waited
    ``max_rate_limit_wait`` seconds in total since its first 429, and no
    single wait is longer than ``max_retry_after``, whatever the server's
    ``Retry-After`` says. Spans go to the
    global OpenTelemetry provider, or ``tracer_provider``; prompt and reply
    text only with ``capture_content``.

    ``hedge`` sends a second copy of a call still unanswered after its
    alias's observed p95, on an otherwise idle slot, and keeps the first
    answer (at most 5% extra calls; see :mod:`plait.execution.hedge`).
    """

    resources: Any = None
    max_concurrent: int = 256
    max_inflight: int = 512
    task_timeout: float | None = None
    max_task_retries: int = 3
    task_retry_delay: float = 0.5
    max_rate_limit_wait: float = 300.0
    max_retry_after: float = 60.0
    streaming: bool = False
    return_exceptions: bool = False
    preserve_order: bool = False
    on_progress: Callable[[int, int | None], Any] | None = None
    progress: bool = False
    on_task_complete: Callable[[int, str, Any], Any] | None = None
    on_task_failed: Callable[[int, str, BaseException], Any] | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    checkpoint_mismatch: Literal["error", "reuse", "new"] = "error"
    cache: Any = None
    max_tokens_total: int | None = None
    max_cost: float | None = None
    profile: bool = False
    profile_path: str | os.PathLike[str] | None = None
    capture_content: bool = False
    tracer_provider: Any = None
    hedge: bool = False


SETTING_NAMES = frozenset(field.name for field in fields(ResolvedSettings))

_POSITIVE_INT = ("max_concurrent", "max_inflight")
_POSITIVE_INT_OR_NONE = ("max_tokens_total",)
_NON_NEGATIVE_INT = ("max_task_retries",)
_POSITIVE_FLOAT = ("max_rate_limit_wait",)
_POSITIVE_FLOAT_OR_NONE = ("task_timeout", "max_cost")
_NON_NEGATIVE_FLOAT = ("task_retry_delay", "max_retry_after")
_BOOL = (
    "streaming",
    "return_exceptions",
    "preserve_order",
    "progress",
    "profile",
    "capture_content",
    "hedge",
)
_CALLABLE = ("on_progress", "on_task_complete", "on_task_failed")
_PATH_OR_NONE = ("checkpoint_dir", "profile_path")
_MISMATCH_POLICIES = ("error", "reuse", "new")
# How each task hook is called; a hook that cannot take these is refused up front.
_HOOK_ARGUMENTS = {
    "on_task_complete": ("index", "node_id", "value"),
    "on_task_failed": ("index", "node_id", "error"),
}


def check_setting_names(settings: Mapping[str, Any], *, where: str) -> None:
    """Reject unknown names and bad values up front, naming the offending field."""
    unknown = sorted(set(settings) - SETTING_NAMES)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {unknown}; known settings are {sorted(SETTING_NAMES)}"
        )
    for name, value in settings.items():
        _check_value(name, value, where)


def _check_value(name: str, value: Any, where: str) -> None:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {name} must be {expected}, got {value!r}")

    if name in _POSITIVE_INT and (not _is_int(value) or value < 1):
        raise bad("a positive int")
    if name in _POSITIVE_INT_OR_NONE and value is not None and (not _is_int(value) or value < 1):
        raise bad("a positive int or None")
    if name in _NON_NEGATIVE_INT and (not _is_int(value) or value < 0):
        raise bad("an int >= 0")
    if name in _POSITIVE_FLOAT and (not _is_number(value) or value <= 0):
        raise bad("a number > 0")
    if (
        name in _POSITIVE_FLOAT_OR_NONE
        and value is not None
        and (not _is_number(value) or value <= 0)
    ):
        raise bad("a number > 0 or None")
    if name in _NON_NEGATIVE_FLOAT and (not _is_number(value) or value < 0):
        raise bad("a number >= 0")
    if name in _BOOL and not isinstance(value, bool):
        raise bad("True or False")
    if name in _CALLABLE and value is not None and not callable(value):
        raise bad("callable or None")
    if name in _HOOK_ARGUMENTS and value is not None and not _takes(value, 3):
        raise bad(f"callable as {name}({', '.join(_HOOK_ARGUMENTS[name])})")
    if name in _PATH_OR_NONE and value is not None and not isinstance(value, str | os.PathLike):
        raise bad("a path (str or os.PathLike) or None")
    if name == "checkpoint_mismatch" and value not in _MISMATCH_POLICIES:
        raise bad(f"one of {', '.join(map(repr, _MISMATCH_POLICIES))}")
    if name == "cache":
        _check_cache(value, bad)
    if name == "tracer_provider" and value is not None and not hasattr(value, "get_tracer"):
        raise bad("an OpenTelemetry TracerProvider or None")


def _check_cache(value: Any, bad: Callable[[str], ConfigError]) -> None:
    if value is None or isinstance(value, bool | str | os.PathLike):
        return
    from plait.storage.cache import ResponseCache

    if not isinstance(value, ResponseCache):
        raise bad("True, False, None, a path or a ResponseCache")


def _takes(function: Callable[..., Any], count: int) -> bool:
    """Whether ``function`` accepts ``count`` positional arguments (True if unknowable)."""
    try:
        inspect.signature(function).bind(*range(count))
    except TypeError:
        return False
    except ValueError:  # a builtin without a signature: let the call decide
        return True
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or float that is not a bool or NaN (NaN compares false with every bound)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


_stack: ContextVar[tuple[ExecutionSettings, ...]] = ContextVar("plait_settings", default=())


class ExecutionSettings:
    """A scope of execution settings; use as ``with`` or ``async with``."""

    def __init__(self, **settings: Any) -> None:
        check_setting_names(settings, where="ExecutionSettings")
        if settings.get("resources") is not None:
            from plait.resources.protocol import as_resource_manager

            settings["resources"] = as_resource_manager(settings["resources"])
        self.settings: dict[str, Any] = settings
        self._tokens: list[Token[tuple[ExecutionSettings, ...]]] = []

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.settings.items())
        return f"ExecutionSettings({shown})"

    def __enter__(self) -> Self:
        self._tokens.append(_stack.set((*_stack.get(), self)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _stack.reset(self._tokens.pop())

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def active_settings() -> tuple[ExecutionSettings, ...]:
    """The enclosing ExecutionSettings blocks, outermost first."""
    return _stack.get()


def resolve_settings(
    call: Mapping[str, Any] | None = None,
    bound: Mapping[str, Any] | None = None,
    bound_resources: Any = None,
) -> ResolvedSettings:
    """Merge defaults, context blocks, ``bind()`` and call-time keywords, in that order."""
    merged: dict[str, Any] = {}
    for scope in _stack.get():
        merged.update(scope.settings)
    if bound_resources is not None:
        merged["resources"] = bound_resources
    if bound:
        merged.update(bound)
    if call:
        merged.update(call)
    if not merged:
        return _DEFAULTS
    return replace(_DEFAULTS, **merged)


_DEFAULTS = ResolvedSettings()
