"""Exception hierarchy.

Every error plait raises derives from :class:`PlaitError`, so applications can
catch the library's failures in one place. The execution engine decides what to
do with a failure by its class alone: :class:`TransientError` is retried,
:class:`RateLimitError` is requeued after the server's requested delay, and
anything else fails the task at once. Messages say what went wrong and, where
it helps, what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence


class PlaitError(Exception):
    """Base class of every error raised by plait."""


class ConfigError(PlaitError, ValueError):
    """A configuration value is invalid; the message names the alias and field."""


class UnknownAliasError(ConfigError, KeyError):
    """A module uses an endpoint alias that the resource configuration lacks."""

    def __str__(self) -> str:
        # KeyError would otherwise wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class ResourcesNotBoundError(PlaitError, RuntimeError):
    """An ``LLMInference`` was called with no resources to run against."""


class TracingError(PlaitError):
    """Tracing met an operation that needs a value that only exists at run time.

    Deliberately not a ``TypeError``: ``str.join`` and friends replace a
    ``TypeError`` raised inside them with their own message, which would hide
    the advice this error carries.
    """


class ExecutionError(PlaitError, RuntimeError):
    """A node failed while a graph was executing."""


class TaskTimeoutError(ExecutionError, TimeoutError):
    """One task ran longer than ``task_timeout``."""


class CancelledNodeError(ExecutionError):
    """A node was not run because a node it depends on failed."""


class BatchError(ExecutionError):
    """One or more inputs of a non-streaming batch failed.

    ``failures`` maps each failed input's index to the exception that sank it,
    so callers can retry just those inputs.
    """

    def __init__(self, failures: dict[int, BaseException], total: int) -> None:
        self.failures = dict(sorted(failures.items()))
        self.total = total
        lines = [f"{len(self.failures)} of {total} inputs failed:"]
        for index, error in list(self.failures.items())[:20]:
            lines.append(f"  input {index}: {type(error).__name__}: {error}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more")
        super().__init__("\n".join(lines))

    @property
    def failed_indices(self) -> Sequence[int]:
        return list(self.failures)


class LLMError(PlaitError):
    """A call to an LLM endpoint failed."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class TransientError(LLMError):
    """A failure worth retrying: connection errors, timeouts, 5xx, bad bodies."""


class RateLimitError(TransientError):
    """The endpoint answered 429; ``retry_after`` is its requested delay in seconds."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = 429,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class PermanentError(LLMError):
    """A failure that retrying cannot fix: 4xx other than 429, bad requests."""


class ResponseValidationError(PermanentError):
    """A reply did not validate against the requested ``response_format`` model."""


class CheckpointError(PlaitError):
    """The checkpoint store cannot hold a value, or does not match this run."""


class BudgetExceededError(PlaitError):
    """A run reached its token or cost budget and stopped taking new requests."""
