"""The events a run reports to telemetry and profiling, and the records they carry.

Observers are only attached when a feature that needs them is on (an
OpenTelemetry SDK is installed, or ``profile=True``), so the scheduler's
normal path never builds these records. :class:`NodeRun` is one attempt at
one node; :class:`CallProbe` is what the resource manager fills in about the
LLM request behind it (which endpoint, how long it waited, what it cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Halt(Protocol):
    """Anything with an ``exceeded`` flag; the resource manager checks it before sending."""

    exceeded: bool


class CallProbe:
    """Where one LLM request went and how its time was spent (``perf_counter`` seconds).

    ``started`` is when the resource manager took the call, ``sent`` when it
    had an endpoint slot and a rate permit and handed the request to the
    client, ``done`` when the reply (or error) came back. ``slot_wait`` and
    ``rate_wait`` split ``sent - started`` into waiting for the endpoint's
    concurrency limit and for its rate limiter. ``cost`` is None when the
    endpoint has no prices. ``halt``, when set and exceeded, stops the call
    before it is sent. ``first_token`` is when a streamed reply's first text
    delta arrived (0 for a whole reply).
    """

    __slots__ = (
        "cache_hit",
        "cost",
        "done",
        "endpoint",
        "first_token",
        "halt",
        "model",
        "rate_wait",
        "sent",
        "slot_wait",
        "started",
    )

    def __init__(self, halt: Halt | None = None) -> None:
        self.halt = halt
        self.endpoint = ""
        self.model = ""
        self.started = 0.0
        self.sent = 0.0
        self.done = 0.0
        self.slot_wait = 0.0
        self.rate_wait = 0.0
        self.cost: float | None = None
        self.cache_hit = False
        self.first_token = 0.0


class NodeRun:
    """One attempt at one node of one input, as observers see it.

    ``node`` is the graph node (its ``kind``, ``module``, ``module_path`` and
    ``dependencies`` are read); ``attempt`` counts earlier attempts of the
    same node (retries and rate-limit requeues). ``span`` is free for the
    telemetry observer to keep its span in. ``parent`` is the dynamic node
    whose forward made this call, so spans and profiles nest it there.
    """

    __slots__ = (
        "alias",
        "attempt",
        "error",
        "finished",
        "index",
        "node",
        "node_id",
        "parent",
        "probe",
        "request",
        "response",
        "span",
        "started",
        "value",
    )

    def __init__(self, index: int, node_id: str, node: Any, attempt: int, started: float) -> None:
        self.index = index
        self.node_id = node_id
        self.node = node
        self.attempt = attempt
        self.started = started
        self.finished = 0.0
        self.alias: str | None = None
        self.request: Any = None
        self.response: Any = None
        self.probe: CallProbe | None = None
        self.error: BaseException | None = None
        self.value: Any = None
        self.span: Any = None
        self.parent: NodeRun | None = None

    @property
    def is_llm(self) -> bool:
        return self.alias is not None


class RunObserver:
    """Receives a run's events; every method is a no-op unless overridden."""

    def run_started(self, name: str, total: int | None) -> None:
        return None

    def run_finished(self, error: BaseException | None) -> None:
        return None

    def input_started(self, index: int) -> None:
        return None

    def input_finished(self, index: int, error: BaseException | None, restored: bool) -> None:
        return None

    def node_started(self, run: NodeRun) -> None:
        return None

    def node_finished(self, run: NodeRun) -> None:
        return None


class MultiObserver(RunObserver):
    """Hands every event to several observers, in order."""

    def __init__(self, observers: Sequence[RunObserver]) -> None:
        self.observers = tuple(observers)

    def run_started(self, name: str, total: int | None) -> None:
        for observer in self.observers:
            observer.run_started(name, total)

    def run_finished(self, error: BaseException | None) -> None:
        for observer in self.observers:
            observer.run_finished(error)

    def input_started(self, index: int) -> None:
        for observer in self.observers:
            observer.input_started(index)

    def input_finished(self, index: int, error: BaseException | None, restored: bool) -> None:
        for observer in self.observers:
            observer.input_finished(index, error, restored)

    def node_started(self, run: NodeRun) -> None:
        for observer in self.observers:
            observer.node_started(run)

    def node_finished(self, run: NodeRun) -> None:
        for observer in self.observers:
            observer.node_finished(run)


def combine(observers: Sequence[RunObserver | None]) -> RunObserver | None:
    """One observer for all that are set, or None when there are none."""
    present = [observer for observer in observers if observer is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else MultiObserver(present)
