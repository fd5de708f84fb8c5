"""An in-process stand-in for the resource manager, for testing pipelines offline.

The engine needs only ``complete``, ``check_aliases`` and ``retry_limit`` from
its resources (:class:`~plait.resources.protocol.ResourceManagerLike`), so a
test can run a real pipeline - tracing, scheduling, retries, checkpoints,
training - against scripted replies, with no server and no clock to wait on.
:class:`FakeResources` is that stand-in, and it keeps what a test wants to
assert on: every call with its request and outcome, and how many calls ran at
once.

To test the resource manager itself (limits, rate limits, pools, usage, the
cache), keep the real :class:`~plait.resources.ResourceManager` and replace
only its client with :class:`~plait.testing.MockClient`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from pydantic import BaseModel

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import PermanentError, UnknownAliasError
from plait.testing._scripted import Handler, Latency, Step, answer, prompt_of, wait_latency

Script: TypeAlias = Step | Sequence[Step]
"""What one alias answers: the same step for every call, or one step per call in order."""

Replies: TypeAlias = Handler | Mapping[str, Script]


@dataclass(slots=True)
class FakeCall:
    """One call the fake received, and what became of it.

    ``start`` and ``end`` are ``time.perf_counter()`` readings; ``start_seq``
    and ``end_seq`` are positions in one sequence shared by every call's start
    and end, so a test can assert on overlap and order without timing.
    ``outcome`` is ``"running"``, ``"ok"``, ``"cancelled"`` or the name of the
    exception class the call raised.
    """

    alias: str
    request: ChatRequest = field(repr=False)
    attempt: int
    start: float
    start_seq: int
    end: float | None = None
    end_seq: int | None = None
    outcome: str = "running"

    @property
    def prompt(self) -> str:
        """The text of the request's last message."""
        return prompt_of(self.request)

    @property
    def system(self) -> str | None:
        """The system message the call sent, or None: where a prompt
        :class:`~plait.Parameter` usually ends up."""
        first = self.request.messages[0]
        return str(first["content"]) if first["role"] == "system" else None


def echo(request: ChatRequest) -> str:
    """The default reply: ``"alias(prompt)"``, so an output shows which calls made it."""
    return f"{request.model}({prompt_of(request)})"


class FakeResources:
    """Resources that answer from a script instead of an endpoint.

    ``replies`` is a handler (a function of the :class:`ChatRequest`, plain or
    ``async``) or a mapping from alias to what that alias answers: one reply
    for every call, a sequence played one per call, or a handler. A reply is
    text, a pydantic model, a :class:`ChatResponse`, or an exception instance,
    which is raised as that call's fault (a ``TransientError`` is retried by
    the engine, a ``PermanentError`` fails the call). Without a script every
    call answers ``"alias(prompt)"``. Text answering a call with a
    ``response_format`` is validated into that model, as a real client would.
    A sequence that runs out answers with a :class:`PermanentError` saying so.

    Each request's ``model`` is set to its alias before the handler sees it,
    as the real manager sets it to the endpoint's model, so one handler can
    tell the aliases apart.

    ``aliases`` are the configured ones; the keys of a ``replies`` mapping by
    default, otherwise any alias is accepted. An unknown alias fails with the
    same :class:`~plait.errors.UnknownAliasError` the real manager raises.
    ``latency`` (seconds, or a function of the request) is waited before each
    reply. ``retry_limits`` gives an alias's ``max_retries``. With ``record``
    false, calls are counted but not kept, for large batches.

    Example: the judge's first call fails with a 503, which the engine
    retries, and the script's next reply answers the retry::

        class Answer(Module):
            def __init__(self) -> None:
                super().__init__()
                self.draft = LLMInference("fast")
                self.judge = LLMInference("judge")

            def forward(self, question: str) -> Any:
                return self.judge(f"Grade: {self.draft(question)}")

        fake = FakeResources({"fast": "Paris", "judge": [TransientError("503"), "SCORE: 9"]})
        module = Answer().bind(resources=fake, task_retry_delay=0.01)
        assert await module("Capital of France?") == "SCORE: 9"
        assert fake.prompts("judge") == ["Grade: Paris", "Grade: Paris"]
        assert [call.outcome for call in fake.calls] == ["ok", "TransientError", "ok"]
    """

    def __init__(
        self,
        replies: Replies | None = None,
        *,
        aliases: Iterable[str] | None = None,
        latency: Latency = 0.0,
        retry_limits: Mapping[str, int] | None = None,
        record: bool = True,
    ) -> None:
        if aliases is None and isinstance(replies, Mapping):
            aliases = replies
        self.aliases: tuple[str, ...] | None = (
            None if aliases is None else tuple(dict.fromkeys(aliases))
        )
        self.latency = latency
        self.retry_limits = dict(retry_limits or {})
        self.record = record
        self.calls: list[FakeCall] = []
        self.call_count = 0
        self.checked: list[tuple[str, ...]] = []
        self.in_flight = 0
        self.peak = 0
        self.alias_in_flight: dict[str, int] = {}
        self.alias_peak: dict[str, int] = {}
        self._default: Handler = echo
        self._by_alias: dict[str, Handler] = {}
        self._scripts: dict[str, deque[Step]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._seq = itertools.count()
        self._replies: Replies | None = None
        self.replies = replies

    @property
    def replies(self) -> Replies | None:
        """The script. Assigning a new one replaces it, e.g. between two phases
        of a test; the configured aliases stay as they were."""
        return self._replies

    @replies.setter
    def replies(self, replies: Replies | None) -> None:
        self._replies = replies
        self._by_alias = {}
        self._default = echo
        if isinstance(replies, Mapping):
            self._by_alias = {alias: _handler(alias, script) for alias, script in replies.items()}
        elif replies is not None:
            self._default = replies

    # -- scripting one prompt --------------------------------------------------

    def script(self, prompt: str, *steps: Step) -> None:
        """Calls whose prompt (last message) is ``prompt`` play these steps first,
        one per call, before the ``replies`` answer them again.

        This is how a test makes one particular call fail, e.g. twice with a
        ``TransientError`` to see the engine retry it, among calls that succeed.
        """
        self._scripts.setdefault(prompt, deque()).extend(steps)

    def gate(self, prompt: str) -> asyncio.Event:
        """Calls whose prompt is ``prompt`` wait for this event before answering,
        which lets a test choose the order calls finish in."""
        return self._gates.setdefault(prompt, asyncio.Event())

    # -- the ResourceManagerLike protocol --------------------------------------

    def check_aliases(self, aliases: Iterable[str]) -> None:
        wanted = tuple(aliases)
        self.checked.append(wanted)
        known = self.aliases
        if known is not None:
            missing = [alias for alias in dict.fromkeys(wanted) if alias not in known]
            if missing:
                raise UnknownAliasError.for_aliases(missing, known)

    def retry_limit(self, alias: str) -> int | None:
        self._require(alias)
        return self.retry_limits.get(alias)

    async def complete(self, alias: str, request: ChatRequest, *, attempt: int = 0) -> ChatResponse:
        self._require(alias)
        request.model = alias
        self.call_count += 1
        call: FakeCall | None = None
        if self.record:
            call = FakeCall(alias, request, attempt, time.perf_counter(), next(self._seq))
            self.calls.append(call)
        self._enter(alias)
        try:
            await wait_latency(self.latency, request)
            step: Step = self._by_alias.get(alias, self._default)
            if self._gates or self._scripts:
                prompt = prompt_of(request)
                gate = self._gates.get(prompt)
                if gate is not None:
                    await gate.wait()
                queue = self._scripts.get(prompt)
                if queue:
                    step = queue.popleft()
            response = await answer(step, request)
            if call is not None:
                call.outcome = "ok"
            return response
        except asyncio.CancelledError:
            if call is not None:
                call.outcome = "cancelled"
            raise
        except BaseException as exc:
            if call is not None:
                call.outcome = type(exc).__name__
            raise
        finally:
            self.in_flight -= 1
            self.alias_in_flight[alias] -= 1
            if call is not None:
                call.end = time.perf_counter()
                call.end_seq = next(self._seq)

    # -- inspection ------------------------------------------------------------

    def prompts(self, alias: str | None = None) -> list[str]:
        """The prompt of every recorded call (optionally of one alias), in call order."""
        return [call.prompt for call in self.calls if alias is None or call.alias == alias]

    def calls_for(self, prompt: str) -> list[FakeCall]:
        """Every recorded call with this prompt, retries included, in call order."""
        return [call for call in self.calls if call.prompt == prompt]

    # -- internals -------------------------------------------------------------

    def _require(self, alias: str) -> None:
        if self.aliases is not None and alias not in self.aliases:
            raise UnknownAliasError.for_aliases([alias], self.aliases)

    def _enter(self, alias: str) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        current = self.alias_in_flight.get(alias, 0) + 1
        self.alias_in_flight[alias] = current
        self.alias_peak[alias] = max(self.alias_peak.get(alias, 0), current)


def _handler(alias: str, script: Script) -> Handler:
    """One alias's script as a handler."""
    if callable(script):
        return script
    if isinstance(script, str | BaseModel | ChatResponse | BaseException):
        reply = script
        return lambda request: reply
    steps = deque(script)
    total = len(steps)

    async def play(request: ChatRequest) -> ChatResponse:
        if not steps:
            raise PermanentError(
                f"FakeResources: alias {alias!r} has used all {total} of its scripted replies"
            )
        return await answer(steps.popleft(), request)

    return play
