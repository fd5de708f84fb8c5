"""An endpoint's concurrency limit: a FIFO counting semaphore for the hot path.

``asyncio.Semaphore`` would do the job, but acquiring it is a coroutine call
even when a slot is free, and that is a measurable share of the per-call
budget. Here the uncontended path is an attribute decrement that the caller
does inline (``if slots.free: slots.free -= 1``); only a caller that finds
no slot free awaits :meth:`Slots.wait`. A released slot passes straight to
the oldest waiter, so late arrivals cannot overtake it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from plait.resources.waiters import WaitQueue


class Slots:
    """``free`` slots now, and the callers queued for the next one."""

    __slots__ = ("free", "waiters")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiters: WaitQueue[None] = WaitQueue(on_lost_wake=self._pass_on)

    def wait(self) -> Coroutine[Any, Any, bool]:
        """Queue for a slot (only when ``free`` is 0); it is handed over by ``release``.

        Resolves to False, with no slot, for a caller turned away by ``evict``.

        Returns the queue's own coroutine rather than wrapping it in another,
        to keep a frame off every contended call.
        """
        return self.waiters.wait(None)

    def release(self) -> None:
        """Give the slot to the oldest waiter, or back to the free count."""
        if not self.waiters.wake_one():
            self.free += 1

    def evict(self) -> int:
        """Turn every queued caller away (their endpoint turned unhealthy)."""
        return self.waiters.evict()

    def _pass_on(self, _: None) -> None:
        # The slot reached a caller cancelled in the same tick.
        self.release()
