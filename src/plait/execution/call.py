"""A pending module call, and the entry points that make one.

A :class:`Call` is what calling a bound module returns. Awaiting it runs every
input and returns the outputs (raising if any input failed); iterating it with
``async for`` yields a :class:`BatchResult` per input as each finishes.
:func:`run` is the explicit form with the strongest settings, and
:func:`run_blocking` the form for synchronous code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Generator, Iterable, Sized
from typing import Any

from plait.clients.sse import DeltaSink
from plait.errors import BatchError, CallReusedError
from plait.execution.driver import RunDriver, Runnable
from plait.execution.inputs import Item, call_items
from plait.execution.results import BatchResult
from plait.execution.settings import ResolvedSettings, check_setting_names
from plait.execution.stream import ResultStream
from plait.profiling.profile import Profile
from plait.resources.protocol import as_resource_manager

_USED_TWICE = "a plait call can be awaited or iterated only once; call the module again"


class Call(Coroutine[Any, Any, Any]):
    """A pending module call: await it for outputs, or ``async for`` over BatchResults.

    It is also a coroutine, so ``asyncio.run(module(x))`` and
    ``asyncio.create_task(module(x))`` work as they do for an ``async def``.
    The coroutine behind it is made only when it first runs, so a call that
    is iterated instead, or never used, leaves nothing unawaited behind.
    """

    def __init__(
        self,
        module: Runnable,
        items: Iterable[Item] | AsyncIterable[Item],
        settings: ResolvedSettings,
        *,
        is_batch: bool,
        total: int | None,
    ) -> None:
        self.module = module
        self.items = items
        self.settings = settings
        self.is_batch = is_batch
        self.total = total
        self.profile: Profile | None = None
        """With ``profile=True``: the run's :class:`~plait.profiling.Profile`, once it ended."""
        self.deltas: DeltaSink | None = None
        """Set by a token stream: the sink for the output node's text deltas."""
        self._used = False
        self._coroutine: Coroutine[Any, Any, Any] | None = None
        self._driver: asyncio.Task[Any] | None = None

    @classmethod
    def single(
        cls, module: Runnable, args: tuple[Any, ...], kwargs: dict[str, Any], call: dict[str, Any]
    ) -> Call:
        settings = module.resolved_settings(**call)
        return cls(module, [(args, kwargs)], settings, is_batch=False, total=1)

    @classmethod
    def for_batch(
        cls,
        module: Runnable,
        items: Iterable[Item] | AsyncIterable[Item],
        call: dict[str, Any],
    ) -> Call:
        settings = module.resolved_settings(**call)
        total = len(items) if isinstance(items, Sized) else None
        return cls(module, items, settings, is_batch=True, total=total)

    def _claim(self) -> None:
        if self._used:
            raise CallReusedError(_USED_TWICE)
        self._used = True

    def __await__(self) -> Generator[Any, None, Any]:
        return self._as_coroutine(None).__await__()

    def send(self, value: Any) -> Any:
        return self._as_coroutine(asyncio.current_task()).send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._as_coroutine(asyncio.current_task()).throw(typ, val, tb)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()

    def _as_coroutine(self, driver: asyncio.Task[Any] | None) -> Coroutine[Any, Any, Any]:
        """The coroutine that runs this call, for the one thing that drives it.

        An ``await`` drives it through ``__await__`` (once); a task through
        ``send``/``throw`` (each step). Anything else reaching for it after it
        started, or after it was iterated, is a reuse: refused before it can
        touch a coroutine that is running or finished.
        """
        if self._coroutine is None:
            self._claim()
            self._driver = driver
            self._coroutine = self._run()
        elif driver is None or driver is not self._driver:
            raise CallReusedError(_USED_TWICE)
        return self._coroutine

    async def result(self) -> Any:
        """Run to the end: the output (single call) or the list of outputs (batch)."""
        self._claim()
        return await self._run()

    async def _run(self) -> Any:
        collected: list[BatchResult] = []
        run = RunDriver(self, collected.append, streaming=False)
        try:
            await run.wait()
        finally:
            await run.aclose()
        if run.fatal is not None:
            # Set while closing: finished work could not be saved.
            raise run.fatal
        collected.sort(key=lambda result: result.index)
        if not self.is_batch:
            only = collected[0]
            if only.error is not None:
                raise only.error
            return only.output
        if self.settings.streaming:
            return collected
        if self.settings.return_exceptions:
            return [result.output if result.error is None else result.error for result in collected]
        failures = {result.index: result.error for result in collected if result.error is not None}
        if failures:
            outputs = {result.index: result.output for result in collected if result.error is None}
            raise BatchError(outputs, failures)
        return [result.output for result in collected]

    def __aiter__(self) -> AsyncIterator[BatchResult]:
        self._claim()
        return ResultStream(self)


def run(module: Runnable, *args: Any, resources: Any = None, **settings: Any) -> Call:
    """Run ``module`` once with explicit resources and settings (the strongest precedence).

    A list (that is not one conversation) or an iterator as the only
    positional argument is a batch, as with a bound call.
    """
    if isinstance(module, type) or not hasattr(module, "_plait_graph"):
        what = f"the class {module.__name__}" if isinstance(module, type) else type(module).__name__
        raise TypeError(
            f"plait.run() needs a Module instance as its first argument, got {what}; "
            "create the module first, e.g. plait.run(MyPipeline(), ...)"
        )
    check_setting_names(settings, where="plait.run()")
    if resources is not None:
        settings["resources"] = as_resource_manager(resources)
    items = call_items(args, {}, where="plait.run()")
    if items is not None:
        return Call.for_batch(module, items, settings)
    return Call.single(module, args, {}, settings)


def run_blocking(call: Call) -> Any:
    """Run a call to completion from synchronous code.

    With no event loop in this thread we start one. Inside a running loop (a
    Jupyter cell) we cannot block that loop's thread on itself, so the call
    runs on a fresh loop in a worker thread while this thread waits. Either
    way the loop ends with the call, so the HTTP connections opened on it are
    closed before it does.

    Ctrl-C reaches the waiting thread, not the worker's loop: the wait
    cancels the run on its loop and lets the worker finish cancelling (a
    moment) before the KeyboardInterrupt goes on, exactly what ``asyncio.run``
    does for a call on this thread. Without that the worker kept sending the
    rest of the batch while the caller believed it had stopped.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_run_and_release(call))
    handle = _Cancellable()
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="plait-sync"
    ) as pool:
        done = pool.submit(asyncio.run, handle.run(_run_and_release(call)))
        try:
            return done.result()
        except BaseException:
            if not done.done():
                handle.cancel()
            raise


class _Cancellable:
    """A coroutine on another thread's loop that this thread can cancel at any moment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelled = False

    async def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        with self._lock:
            self._task = asyncio.current_task()
            self._loop = asyncio.get_running_loop()
            cancelled = self._cancelled
        if cancelled:  # interrupted before the worker thread got going
            coroutine.close()
            raise asyncio.CancelledError
        return await coroutine

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            task, loop = self._task, self._loop
        if task is not None and loop is not None:
            # A loop that has already closed has nothing left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)


async def _run_and_release(call: Call) -> Any:
    try:
        return await call.result()
    finally:
        close = getattr(call.settings.resources, "aclose", None)
        if close is not None:
            await close()
