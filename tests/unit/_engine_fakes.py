"""In-process stand-ins for the resource manager, shared by the execution-engine tests.

:class:`FakeResources` satisfies the engine's ``ResourceManagerLike`` protocol
without any network. Every call is keyed by its prompt (the last message's
text), so a test can script what happens to one particular call: a delay, a
queue of failures to raise on successive attempts, or a hang. It records when
each call started and ended, in wall time and as positions in one shared
sequence of events, and how many calls were running at once, which is what lets
tests talk about overlap and concurrency caps without timing assertions. A
gate (an event the call waits for) lets a test decide the order calls finish in.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import UnknownAliasError
from plait.inference import LLMInference
from plait.module import Module

_sleep = asyncio.sleep
"""Bound at import so that tests which patch ``asyncio.sleep`` to count the engine's
sleeps do not also count the fake's simulated latency."""


class Hang:
    """Scripted behaviour: the call never returns (until it is cancelled)."""


HANG = Hang()

Behaviour = BaseException | Hang


@dataclass
class CallRecord:
    """One call the fake received, and what became of it."""

    alias: str
    prompt: str
    attempt: int
    start: float
    start_seq: int
    end: float | None = None
    end_seq: int | None = None
    outcome: str = "running"
    request: ChatRequest | None = field(default=None, repr=False)


class FakeResources:
    """A configurable, observable resource manager for engine tests.

    ``reply`` turns (alias, prompt) into the response text; the default echoes
    both so outputs show which call produced them. ``delay`` is the latency of
    every call unless ``delays`` names the prompt.
    """

    def __init__(
        self,
        aliases: Iterable[str] = ("fast",),
        *,
        delay: float = 0.0,
        delays: dict[str, float] | None = None,
        reply: Callable[[str, str], str] | None = None,
        retry_budgets: dict[str, int] | None = None,
        record: bool = True,
    ) -> None:
        self.aliases = frozenset(aliases)
        self.delay = delay
        self.delays: dict[str, float] = dict(delays or {})
        self.reply = reply or (lambda alias, prompt: f"{alias}({prompt})")
        self.retry_budgets: dict[str, int] = dict(retry_budgets or {})
        self.record = record
        self.scripts: dict[str, deque[Behaviour]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.calls: list[CallRecord] = []
        self.call_count = 0
        self.checked: list[tuple[str, ...]] = []
        self.current = 0
        self.peak = 0
        self._seq = itertools.count()

    # -- scripting --------------------------------------------------------------

    def script(self, prompt: str, *behaviours: Behaviour) -> None:
        """Successive calls with ``prompt`` meet these behaviours, then succeed."""
        self.scripts.setdefault(prompt, deque()).extend(behaviours)

    def gate(self, prompt: str) -> asyncio.Event:
        """Calls with ``prompt`` wait for this event before answering."""
        return self.gates.setdefault(prompt, asyncio.Event())

    # -- the ResourceManagerLike protocol ---------------------------------------

    def check_aliases(self, aliases: Iterable[str]) -> None:
        wanted = tuple(aliases)
        self.checked.append(wanted)
        unknown = sorted(set(wanted) - self.aliases)
        if unknown:
            raise UnknownAliasError(f"unknown alias(es) {unknown}; known: {sorted(self.aliases)}")

    def retry_budget(self, alias: str) -> int | None:
        return self.retry_budgets.get(alias)

    async def complete(self, alias: str, request: ChatRequest, *, attempt: int = 0) -> ChatResponse:
        prompt = str(request.messages[-1]["content"])
        self.call_count += 1
        record: CallRecord | None = None
        if self.record:
            record = CallRecord(
                alias, prompt, attempt, time.perf_counter(), next(self._seq), request=request
            )
            self.calls.append(record)
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            delay = self.delays.get(prompt, self.delay)
            if delay:
                await _sleep(delay)
            gate = self.gates.get(prompt)
            if gate is not None:
                await gate.wait()
            script = self.scripts.get(prompt)
            behaviour = script.popleft() if script else None
            if isinstance(behaviour, Hang):
                await asyncio.get_running_loop().create_future()
            if isinstance(behaviour, BaseException):
                if record is not None:
                    record.outcome = type(behaviour).__name__
                raise behaviour
            if record is not None:
                record.outcome = "ok"
            return ChatResponse(content=self.reply(alias, prompt), model=f"model-{alias}")
        except asyncio.CancelledError:
            if record is not None:
                record.outcome = "cancelled"
            raise
        finally:
            self.current -= 1
            if record is not None:
                record.end = time.perf_counter()
                record.end_seq = next(self._seq)

    # -- inspection -------------------------------------------------------------

    def prompts(self) -> list[str]:
        return [call.prompt for call in self.calls]

    def calls_for(self, prompt: str) -> list[CallRecord]:
        return [call for call in self.calls if call.prompt == prompt]


# -- modules used across the engine tests ---------------------------------------


class Upper(Module):
    """A child-less custom module: its forward runs at execution on real text."""

    def forward(self, text: str) -> str:
        return text.upper()


class FanOut(Module):
    """``width`` independent LLM calls on the input, then one call joining them."""

    def __init__(self, width: int = 3, alias: str = "fast") -> None:
        super().__init__()
        self.width = width
        for index in range(width):
            setattr(self, f"branch{index}", LLMInference(alias))
        self.join = LLMInference(alias)

    def forward(self, text: str) -> Any:
        parts = [getattr(self, f"branch{index}")(f"b{index}:{text}") for index in range(self.width)]
        return self.join(" | ".join(parts))


class Chain(Module):
    """Two LLM calls in series, the second prompted with the first's reply."""

    def __init__(self, alias: str = "fast") -> None:
        super().__init__()
        self.first = LLMInference(alias)
        self.second = LLMInference(alias)

    def forward(self, text: str) -> Any:
        return self.second(f"then:{self.first(text)}")


class TwoBranches(Module):
    """Two independent chains of two calls each; returns both results as a tuple."""

    def __init__(self, alias: str = "fast") -> None:
        super().__init__()
        self.left = Chain(alias)
        self.right = Chain(alias)

    def forward(self, text: str) -> Any:
        return self.left(f"L:{text}"), self.right(f"R:{text}")
