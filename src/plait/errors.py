"""Every exception plait raises, in one tree.

Every error plait raises derives from :class:`PlaitError`, so applications can
catch the library's failures in one place::

    PlaitError
    ├── ConfigError (ValueError)            a setting, file or argument is invalid
    │   ├── EndpointConfigError             one endpoint's fields, line by line
    │   ├── UnknownAliasError (KeyError)    a module names an alias the config lacks
    │   ├── UsageError                      a command-line argument cannot be used
    │   ├── ModuleCycleError                a module would contain itself
    │   ├── LossCheckError (TypeError)      a VerifierLoss check returned neither None nor text
    │   ├── UnknownOptionError (TypeError)  a call passed a keyword that is no request option
    │   └── MetricError (TypeError)         a metric returned neither a bool nor a score in [0, 1]
    ├── FactoryError                        ``plait run``'s factory raised while building
    ├── ResourcesNotBoundError (RuntimeError)
    ├── ResourcesInUseError                 a ResourceManager is busy on another loop
    ├── TracingError                        forward needed a value while tracing
    ├── GraphError (ValueError)             a graph that cannot be ordered (a cycle)
    │   └── UnknownNodeError (KeyError)     a node id the graph does not hold
    ├── ExecutionError (RuntimeError)
    │   ├── TaskTimeoutError (TimeoutError)
    │   ├── CancelledNodeError              an upstream node failed
    │   ├── BatchError                      some inputs of a batch failed
    │   ├── CallReusedError                 a Call was awaited or iterated a second time
    │   ├── ToolRoundsError                 a tool loop passed max_tool_rounds
    │   └── TemplateError                   a format template asks for more than text
    ├── LLMError                            an endpoint call failed
    │   ├── TransientError                  worth retrying
    │   │   └── RateLimitError              429, with the server's delay
    │   │       └── EndpointBackoffError    not sent: the endpoint is backing off
    │   └── PermanentError                  retrying cannot help
    │       ├── QuotaExceededError          429 insufficient_quota: the account is out
    │       ├── ResponseValidationError     a reply did not fit response_format
    │       ├── StructuredOutputRejectedError  the endpoint refused the response_format form
    │       ├── ResponseTooLargeError       a reply passed max_response_bytes
    │       └── StreamInterruptedError      a token stream broke after text was delivered
    ├── BackwardError (RuntimeError)
    ├── StorageError                        checkpoints and the cache
    │   ├── CheckpointError
    │   │   └── UnstorableError                 one input's value cannot be stored
    │   ├── UnencodableError (TypeError)    a value JSON cannot hold
    │   ├── UnknownClassError (LookupError) a stored model class is not loaded
    │   ├── StoredValueError (ValueError)   a stored value this plait cannot read
    │   └── WriterError (RuntimeError)      the background writer failed
    ├── BudgetExceededError
    └── ToolArgumentsError (ValueError)     a model's tool call does not fit the tool

The builtin bases let code that already catches ``ValueError`` or
``TimeoutError`` keep working. The execution engine decides what to
do with a failure by its class alone: :class:`TransientError` is retried,
:class:`RateLimitError` is requeued after the server's requested delay, and
anything else fails the task at once. Messages say what went wrong and, where
it helps, what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any


class PlaitError(Exception):
    """Base class of every error raised by plait."""


class ConfigError(PlaitError, ValueError):
    """A configuration value is invalid; the message names the alias and field."""


class EndpointConfigError(ConfigError):
    """An EndpointConfig's problems, kept as lines so an enclosing
    ResourceConfig can prefix each with the alias and pool index (pydantic
    calls the custom ``__init__`` for nested endpoints and wraps what it raises).
    """

    def __init__(self, lines: list[str]) -> None:
        super().__init__(
            "invalid endpoint configuration:\n" + "\n".join("  " + line for line in lines)
        )
        self.lines = lines


class UnknownAliasError(ConfigError, KeyError):
    """A module uses an endpoint alias that the resource configuration lacks."""

    @classmethod
    def for_aliases(cls, missing: Sequence[str], configured: Iterable[str]) -> UnknownAliasError:
        """The error for ``missing`` aliases. It names the configured ones and the
        closest match, since a typo is the usual cause; the real manager and the
        in-process fakes both raise it, so tests see the message users see."""
        known = list(configured)
        names = ", ".join(repr(alias) for alias in missing)
        noun = "alias" if len(missing) == 1 else "aliases"
        message = f"unknown {noun} {names}; configured aliases: "
        message += ", ".join(repr(alias) for alias in known) or "(none)"
        hints = []
        for alias in missing:
            close = difflib.get_close_matches(alias, known, n=1)
            if close:
                hints.append(f"{alias!r} -> {close[0]!r}")
        if hints:
            message += f" (did you mean {', '.join(hints)}?)"
        return cls(message)

    def __str__(self) -> str:
        # KeyError would otherwise wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class UsageError(ConfigError):
    """A command-line argument names a target, file or factory that cannot be used."""


class ModuleCycleError(ConfigError):
    """Registering a child would make a module contain itself (directly or through
    its children), which no traversal, repr or trace of the tree could finish."""


class LossCheckError(ConfigError, TypeError):
    """A VerifierLoss ``check`` returned something other than None or feedback text.

    A ConfigError because the check is the loss's argument and is wrong; a
    TypeError because the wrong thing is the type of what it returned.
    """


class UnknownOptionError(ConfigError, TypeError):
    """A call to an ``LLMInference`` passed a keyword that is not a request option.

    A ``TypeError`` too, as an unexpected keyword argument is in Python.
    """


class FactoryError(PlaitError):
    """The factory named on the ``plait`` command line raised while building the module."""


class MetricError(ConfigError, TypeError):
    """An evaluation metric returned something other than a bool or a number in [0, 1].

    Every optimizer compares candidates by the mean of these scores, so one
    out of range would decide a comparison silently; it is refused at once.
    """


class ResourcesNotBoundError(PlaitError, RuntimeError):
    """An ``LLMInference`` was called with no resources to run against."""


class ResourcesInUseError(PlaitError):
    """A ResourceManager was asked to send from a second event loop while another
    was still sending; its limits hold within one loop at a time."""


class TracingError(PlaitError):
    """Tracing met an operation that needs a value that only exists at run time.

    Deliberately not a ``TypeError``: ``str.join`` and friends replace a
    ``TypeError`` raised inside them with their own message, which would hide
    the advice this error carries.
    """


class GraphError(PlaitError, ValueError):
    """An InferenceGraph is not a DAG, or is asked about a node it lacks."""


class UnknownNodeError(GraphError, KeyError):
    """A node id the graph does not hold."""

    def __str__(self) -> str:
        # KeyError would otherwise wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class ExecutionError(PlaitError, RuntimeError):
    """A node failed while a graph was executing."""


class TaskTimeoutError(ExecutionError, TimeoutError):
    """One task ran longer than ``task_timeout``."""


class CancelledNodeError(ExecutionError):
    """A node was not run because a node it depends on failed."""


class BatchError(ExecutionError):
    """One or more inputs of a non-streaming batch failed.

    Nothing that was paid for is lost with it: ``outputs`` maps each input
    that succeeded to its output and ``failures`` each failed input to the
    exception that sank it, so callers can keep the first and retry just the
    second. ``results`` is the whole batch in input order, an exception at
    each failed index (what ``return_exceptions=True`` returns instead).
    """

    def __init__(self, outputs: dict[int, Any], failures: dict[int, BaseException]) -> None:
        self.outputs = dict(sorted(outputs.items()))
        self.failures = dict(sorted(failures.items()))
        self.total = len(self.outputs) + len(self.failures)
        lines = [f"{len(self.failures)} of {self.total} inputs failed:"]
        for index, error in list(self.failures.items())[:20]:
            lines.append(f"  input {index}: {type(error).__name__}: {error}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more")
        lines.append("  (the outputs of the other inputs are in .outputs, all of them in .results)")
        super().__init__("\n".join(lines))

    @property
    def failed_indices(self) -> Sequence[int]:
        return list(self.failures)

    @property
    def results(self) -> list[Any]:
        """Every input's output, or its exception, in input order."""
        merged: dict[int, Any] = {**self.outputs, **self.failures}
        return [merged[index] for index in sorted(merged)]


class CallReusedError(ExecutionError):
    """A :class:`~plait.execution.call.Call` was awaited or iterated after it had run.

    A call runs its inputs once: a second await would either send every
    request again or hand back results the caller may already have changed,
    so it is refused; call the module again for a fresh run.
    """


class TemplateError(ExecutionError):
    """A ``F.format`` template cannot be filled safely.

    Templates are often data (a model's reply, a prompt an optimizer rewrote),
    so one may hold only plain ``{name}`` / ``{0}`` / ``{}`` fields: a format
    spec or conversion would let the text drive Python's format language, and
    the filled text is bounded in size.
    """


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


class EndpointBackoffError(RateLimitError):
    """The call was not sent: after a run of 429s its endpoint would hold it too long.

    Raised by the resource manager instead of parking a call for longer than
    a few seconds behind a backed-off endpoint, so the retry policy, which
    knows the run's ``max_rate_limit_wait``, decides whether it waits on.
    Nothing reached the server, so it does not count as a requeue for a 429.
    """


class PermanentError(LLMError):
    """A failure that retrying cannot fix: 4xx other than 429, bad requests."""


class QuotaExceededError(PermanentError):
    """429 with ``insufficient_quota``: the account is out of credit, not busy."""


class ResponseValidationError(PermanentError):
    """A reply did not validate against the requested ``response_format`` model."""


class StructuredOutputRejectedError(PermanentError):
    """The endpoint refused the form structured output was requested in (its dialect).

    Under ``structured_output="auto"`` the resource layer answers this by
    falling back to the next dialect; with a dialect set explicitly it is
    final, and the message says which setting the endpoint needs.
    """


class ResponseTooLargeError(PermanentError):
    """A reply body passed the endpoint's ``max_response_bytes``; reading stopped there."""


class StreamInterruptedError(PermanentError):
    """A streamed reply broke off after some of its text had reached the consumer.

    Permanent for the engine: a retry would start the text again under deltas
    the consumer has already shown, so the caller decides. The partial text
    is never cached or checkpointed.
    """


class BackwardError(PlaitError, RuntimeError):
    """A backward pass cannot run: nothing recorded, a released record, a bad result."""


class StorageError(PlaitError):
    """Checkpoints or the response cache could not store or read something."""


class CheckpointError(StorageError):
    """The checkpoint store cannot hold a value, or does not match this run."""


class UnstorableError(CheckpointError):
    """One input's input, output or node value cannot be checkpointed.

    That input fails with this error and the rest of the batch goes on; a
    checkpoint that cannot be written at all is a plain CheckpointError,
    which ends the run.
    """


class UnencodableError(StorageError, TypeError):
    """A value cannot be stored; ``path`` says where in it, ``why`` what is wrong.

    Usually its type is one JSON cannot hold; a string holding a lone
    surrogate is valid JSON but not Unicode text, so no file can hold it.
    """

    def __init__(self, type_name: str, path: str, why: str = "cannot be stored as JSON") -> None:
        where = f" at {path}" if path else ""
        super().__init__(f"a {type_name} value{where} {why}")
        self.type_name = type_name
        self.path = path


class UnknownClassError(StorageError, LookupError):
    """A stored model names a class that this process has not loaded."""


class StoredValueError(StorageError, ValueError):
    """A stored value is tagged with a type this plait does not know.

    The file was written by a newer plait or edited by hand. It is also a
    ``ValueError``: the stored text is well-formed JSON with content that
    makes no sense here.
    """


class WriterError(StorageError, RuntimeError):
    """The background writer failed; it names the database and the cause."""


class BudgetExceededError(PlaitError):
    """A run reached its token or cost budget and stopped taking new requests."""


class ToolArgumentsError(PlaitError, ValueError):
    """A model's tool call does not fit the tool's parameters; the message is for the model.

    It is read by the model rather than raised to the caller: running a turn's
    tool calls answers with this text so the model can correct its call.
    """


class ToolRoundsError(ExecutionError):
    """A tool loop ran ``max_tool_rounds`` rounds of tool calls and the model asked for more.

    Raised rather than answered with a made-up text: the input fails with
    the last calls named, and a checkpointed rerun with a higher limit
    replays the rounds already paid for.
    """
