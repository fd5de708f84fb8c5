"""Token streaming: one input's run, with its output node's text as it arrives.

``module.stream(x)`` is an ordinary run of one input (the same scheduler,
limits, retries, cache, checkpoint and spans as ``await module(x)``) whose
output LLM node is sent as a stream: the scheduler hands that node's call a
:class:`Delivery`, the resource manager passes each delta to it, and the
:class:`TokenStream` the caller iterates yields them. Not to be confused with
``streaming=True`` on a batch, which yields whole results as inputs finish
(:mod:`plait.execution.stream`).

When nothing is streamed (the output node is not an LLM call, the reply came
from the cache or a checkpoint, the resources are a test double) the final
output's text is yielded once, at the end: whatever the path, the joined
deltas are the whole reply's text.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import Any, Self

from plait.errors import ExecutionError
from plait.execution.call import Call
from plait.execution.dynamic import current_scope
from plait.execution.stream import Waker, weakly
from plait.tracing.context import current_tracer
from plait.values import to_text


class TokenStream:
    """``async for delta in module.stream(x)``: the output's text, delta by delta.

    The run starts on the first ``__anext__``. Leaving early (``break``,
    :meth:`aclose`, a cancelled consumer) cancels it, which closes the HTTP
    stream and releases the endpoint slot. After the loop, :attr:`output` is
    the run's output (the reply text, or the ``response_format`` model).
    Errors of the run (after retries) are raised from the loop.
    """

    def __init__(self, call: Call) -> None:
        self._call = call
        # Weakly, as everything the run holds: a ``break`` must be able to drop
        # the stream while its run is still going, so ``__del__`` can stop it.
        call.deltas = weakly(self._put)
        self._waker = Waker()
        self._wake_weakly = weakly(self._waker.wake)
        self._buffer: deque[str] = deque()
        self._task: asyncio.Task[Any] | None = None
        self._streamed = False
        self._ended = False
        self.output: Any = None
        """The run's output, once the stream has ended."""

    @classmethod
    def start(cls, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TokenStream:
        """The stream of one call of ``module`` (a list argument is one input, not a batch)."""
        where = f"{type(module).__name__}.stream()"
        if current_tracer() is not None or current_scope() is not None:
            raise ExecutionError(
                f"{where} is for the code that runs a pipeline, not for a forward(): inside "
                "forward, call the module (its output is what the outer stream shows)"
            )
        return cls(Call.single(module, args, kwargs, {}))

    def _put(self, text: str) -> None:
        self._streamed = True
        self._buffer.append(text)
        self._waker.wake()

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> str:
        task = self._task
        if task is None:
            task = self._task = asyncio.get_running_loop().create_task(self._call.result())
            task.add_done_callback(self._wake_weakly)
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            if task.done():
                self._ended = True
                self.output = task.result()
                if self._streamed:
                    raise StopAsyncIteration
                # Nothing came as a stream: the output's text is the one delta.
                self._streamed = True
                return to_text(self.output)
            try:
                await self._waker.wait()
            except BaseException:
                await self.aclose()
                raise
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop the run if it is still going; its HTTP stream is closed before this returns."""
        self._ended = True
        self._buffer.clear()
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except BaseException:
            if not task.cancelled():
                raise
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A ``break`` drops the stream without awaiting anything: cancelling is
        # synchronous, and the run's own cleanup closes the connection.
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # seen here, so the loop does not report it as lost
