"""Hedged requests: a second copy of a straggling call, on capacity nobody wants.

With heavy-tailed latency a few calls take ten times the median, and the
run waits for them at its end however well the ready nodes are ordered: the
scheduler cannot know in advance which call will straggle. With ``hedge``
on, a call still unanswered after its alias's observed 95th percentile gets
a second copy, the first answer wins and the other copy is cancelled.

The copy never takes a slot that queued work wants: it waits at the alias's
gate behind every ordinary call, so it only runs on a slot that would
otherwise sit idle (in practice, the tail of a batch). Copies are capped at
``SHARE`` of the alias's calls, and one node has at most one copy. A
finished node's result is recorded once, from the winner, so a checkpoint
stores it once and a rerun pays for it never.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from plait.execution.gate import Gate, Key

T = TypeVar("T")

SHARE = 0.05
"""Most extra calls hedging may add, as a share of the alias's calls."""

_WINDOW = 256
_MIN_SAMPLES = 20
_REFRESH = 16


class Hedger:
    """One alias's recent latencies, its straggler threshold and the copies spent."""

    __slots__ = ("_fresh", "_samples", "_threshold", "calls", "copies")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_WINDOW)
        self._fresh = 0
        self._threshold: float | None = None
        self.calls = 0
        self.copies = 0

    def observe(self, seconds: float) -> None:
        """A call of this alias answered after ``seconds`` on its slot."""
        self._samples.append(seconds)
        self._fresh += 1
        if self._fresh >= _REFRESH and len(self._samples) >= _MIN_SAMPLES:
            ordered = sorted(self._samples)
            self._threshold = ordered[int(0.95 * (len(ordered) - 1))]
            self._fresh = 0

    @property
    def threshold(self) -> float | None:
        """Seconds after which a call counts as straggling (None: too few samples yet)."""
        return self._threshold

    def may_copy(self) -> bool:
        return self.copies < SHARE * self.calls


async def hedged(
    hedger: Hedger,
    gate: Gate,
    key: Key,
    make: Callable[[], tuple[Awaitable[T], Any]],
) -> tuple[T, Any]:
    """The first answer of ``make()``'s call and, for a straggler, of a second copy.

    ``make`` starts one copy and returns its awaitable with a token that
    comes back with the copy that won (its cost probe, say).
    """
    hedger.calls += 1
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    primary = loop.create_task(_copy(hedger, gate, key, make, started))
    primary.add_done_callback(_settle)
    spare: asyncio.Task[tuple[T, Any] | None] | None = None
    try:
        await asyncio.wait((started, primary), return_when=asyncio.FIRST_COMPLETED)
        threshold = hedger.threshold
        if not primary.done() and threshold is not None:
            await asyncio.wait((primary,), timeout=threshold)
        if primary.done() or threshold is None or not hedger.may_copy():
            return _answer(await primary)
        # Behind every ordinary call at the gate: it runs only on an idle slot.
        spare = loop.create_task(_copy(hedger, gate, (sys.maxsize, key[1], key[2]), make, None))
        spare.add_done_callback(_settle)
        done, _ = await asyncio.wait((primary, spare), return_when=asyncio.FIRST_COMPLETED)
        if spare in done and spare.exception() is None and spare.result() is not None:
            return _answer(spare.result())
        # The primary answered or failed first, or the spare got nothing:
        # the primary's outcome is the node's.
        return _answer(await primary)
    finally:
        for task in (primary, spare):
            if task is not None and not task.done():
                task.cancel()
        if not started.done():
            started.cancel()


def _settle(task: asyncio.Task[Any]) -> None:
    """Mark a copy's outcome as seen: the losing copy's failure is no one's concern."""
    if not task.cancelled():
        task.exception()


def _answer(result: tuple[T, Any] | None) -> tuple[T, Any]:
    assert result is not None, "only a spare copy gives up without an answer"
    return result


async def _copy(
    hedger: Hedger,
    gate: Gate,
    key: Key,
    make: Callable[[], tuple[Awaitable[T], Any]],
    started: asyncio.Future[None] | None,
) -> tuple[T, Any] | None:
    """One copy on one slot; ``started`` is resolved once the primary has its slot.

    The spare (``started`` None) is counted when it gets a slot, and gives
    up (None) if the cap was reached while it waited.
    """
    await gate.acquire(key)
    try:
        if started is None:
            if not hedger.may_copy():
                return None
            hedger.copies += 1
        elif not started.done():
            started.set_result(None)
        began = time.monotonic()
        call, token = make()
        result = await call
        hedger.observe(time.monotonic() - began)
        return result, token
    finally:
        gate.release()
