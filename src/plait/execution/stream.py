"""A run's results as an async iterator: as they finish, or in input order.

Results are buffered until the consumer asks for them, and an input leaves
the run only when its result is taken, so a slow consumer holds back
admission instead of letting results pile up.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from plait.execution.driver import Job, RunDriver
from plait.execution.results import BatchResult


class ResultStream:
    """Async iterator over BatchResults.

    Dropping it (``break`` out of ``async for``) cancels the run at once from
    ``__del__``: cancelling tasks is synchronous, so in-flight work stops
    without waiting for the event loop to finalise an async generator. That
    only works if the consumer holds the last reference, so the run reaches
    back into the stream through weak references alone.
    """

    def __init__(self, call: Job) -> None:
        self._buffer: deque[BatchResult] = deque()
        self._waker = Waker()
        self._preserve = call.settings.preserve_order
        self._reorder: dict[int, BatchResult] = {}
        self._next_index = 0
        self._run = RunDriver(call, weakly(self._put), streaming=True)
        self._wake_weakly = weakly(self._waker.wake)

    def _put(self, result: BatchResult) -> None:
        if self._preserve:
            self._reorder[result.index] = result
            while self._next_index in self._reorder:
                self._buffer.append(self._reorder.pop(self._next_index))
                self._next_index += 1
        else:
            self._buffer.append(result)
        self._waker.wake()

    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> BatchResult:
        run = self._run
        run.start()
        while not self._buffer:
            if run.fatal is not None:
                await self.aclose()
                raise run.fatal
            if run.finished:
                await self.aclose()
                if run.fatal is not None:
                    raise run.fatal
                raise StopAsyncIteration
            run.on_change = self._wake_weakly
            try:
                await self._waker.wait()
            except BaseException:
                await self.aclose()
                raise
        result = self._buffer.popleft()
        run.release()
        return result

    async def aclose(self) -> None:
        await self._run.aclose()

    def __del__(self) -> None:
        self._run.cancel()


class Waker:
    """Wakes the one consumer of a stream when something arrives or the run ends.

    Both kinds of stream (results here, tokens in ``token_stream``) buffer
    what the run produces and park their consumer on a future between
    items; this is that future, made once per wait and dropped after it.
    """

    __slots__ = ("__weakref__", "_waiter")

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def wake(self, *_: object) -> None:
        """Wake the consumer, if one waits (callable as a done-callback too)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Park until the next :meth:`wake`."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


def weakly(method: Callable[..., None]) -> Callable[..., None]:
    """Call ``method`` while its object is alive, without keeping it alive."""
    ref = weakref.WeakMethod(method)

    def forward(*args: Any) -> None:
        target = ref()
        if target is not None:
            target(*args)

    return forward
