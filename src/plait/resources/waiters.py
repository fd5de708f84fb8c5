"""The FIFO of parked callers behind every limit that makes callers wait.

Concurrency slots, rate limiters and idle scheduler workers all park a caller
on a future and later wake the oldest one, so arrival order is kept and
nothing polls. The hard part is cancellation, and it is the same for all of
them: a caller cancelled while queued must leave the queue, and one that was
woken in the same tick as its cancellation holds a grant it will never use,
which has to be passed on or the limit leaks. That logic lives here once.

A waiter carries a value (a rate limiter's token count; ``None`` where there
is nothing to carry) so a queue that grants by condition can check its head.
A waiter can also be turned away (``evict``): it wakes without a grant, which
is how calls queued for an endpoint that has turned unhealthy leave for
another one instead of waiting it out.
Futures are made in the running loop at wait time, never up front, because
``run_sync`` may run successive calls in fresh event loops.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Waiter(Generic[T]):
    """One parked caller: the future it awaits and the value it queued with."""

    __slots__ = ("future", "value")

    def __init__(self, future: asyncio.Future[bool], value: T) -> None:
        self.future = future
        self.value = value


class WaitQueue(Generic[T]):
    """Callers waiting in arrival order, woken one at a time or all at once.

    ``on_lost_wake(value)`` runs when a woken caller turns out to have been
    cancelled in the same tick: whatever it was granted must go to someone
    else. ``on_head_change()`` runs when the first waiter changes other than
    by being woken (a caller joined an empty queue, or the first one was
    cancelled), for queues that arm a timer for their head.

    ``len()`` counts queued callers, including cancelled ones that have not
    yet run their cleanup; the wake methods skip those.
    """

    __slots__ = ("_on_head_change", "_on_lost_wake", "_waiters")

    def __init__(
        self,
        *,
        on_lost_wake: Callable[[T], None] | None = None,
        on_head_change: Callable[[], None] | None = None,
    ) -> None:
        self._waiters: deque[Waiter[T]] = deque()
        self._on_lost_wake = on_lost_wake
        self._on_head_change = on_head_change

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(self, value: T) -> bool:
        """Queue at the back; True once granted, False if turned away by ``evict``.

        Cancellation is cleaned up: a grant that reaches a cancelled caller is
        passed on (``on_lost_wake``), an eviction needs nothing.
        """
        waiter = Waiter(asyncio.get_running_loop().create_future(), value)
        waiters = self._waiters
        waiters.append(waiter)
        if len(waiters) == 1 and self._on_head_change is not None:
            self._on_head_change()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.cancelled():
                self._withdraw(waiter)
            elif waiter.future.result() and self._on_lost_wake is not None:
                self._on_lost_wake(value)
            raise

    def head(self) -> Waiter[T] | None:
        """The oldest caller still waiting (cancelled ones are dropped), or None."""
        waiters = self._waiters
        while waiters:
            first = waiters[0]
            if not first.future.done():
                return first
            waiters.popleft()
        return None

    def wake_one(self) -> bool:
        """Wake the oldest caller still waiting; False if there was none."""
        waiters = self._waiters
        while waiters:
            future = waiters.popleft().future
            if not future.done():
                future.set_result(True)
                return True
        return False

    def evict(self, keep: int = 0) -> int:
        """Turn away every caller still waiting after the first ``keep``; returns how many.

        The evicted wake with False and were granted nothing, so nothing is
        passed on. The head may change, so ``on_head_change`` runs.
        """
        live = [waiter for waiter in self._waiters if not waiter.future.done()]
        if len(live) <= keep:
            return 0
        for waiter in live[keep:]:
            waiter.future.set_result(False)
        self._waiters = deque(live[:keep])
        if self._on_head_change is not None:
            self._on_head_change()
        return len(live) - keep

    def wake_all(self) -> int:
        """Wake every caller still waiting; returns how many were woken."""
        woken = 0
        while self.wake_one():
            woken += 1
        return woken

    def clear(self) -> None:
        """Forget every waiter without waking it (their loop has finished)."""
        self._waiters.clear()

    def _withdraw(self, waiter: Waiter[T]) -> None:
        waiters = self._waiters
        was_head = bool(waiters) and waiters[0] is waiter
        try:
            waiters.remove(waiter)
        except ValueError:
            return
        if was_head and self._on_head_change is not None:
            self._on_head_change()
