"""Turning a module call into a run: admission, results, streaming, blocking.

A :class:`Call` is what calling a bound module returns. Awaiting it runs every
input and returns the outputs (raising if any input failed); iterating it with
``async for`` yields a :class:`BatchResult` per input as each finishes. Inputs
are admitted lazily, at most ``max_inflight`` at a time, so a generator of a
million inputs never sits in memory at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sized,
)
from dataclasses import replace
from typing import Any, Protocol

from plait.errors import BatchError
from plait.execution.progress import ProgressReporter
from plait.execution.record import ForwardRecord
from plait.execution.resources import ResourceManagerLike, as_resource_manager
from plait.execution.results import BatchResult
from plait.execution.scheduler import Scheduler
from plait.execution.settings import ResolvedSettings, check_setting_names, resolve_settings
from plait.execution.state import ExecutionState, GraphPlan, plan_for
from plait.graph import InferenceGraph
from plait.values import Value, kind_of

Item = tuple[tuple[Any, ...], dict[str, Any]]


class Runnable(Protocol):
    """What the runner needs from a module."""

    _bound_resources: Any
    _bound_settings: dict[str, Any]

    def _plait_graph(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> InferenceGraph: ...


def batch_items(inputs: Any) -> Iterable[Item] | AsyncIterable[Item]:
    """Normalise ``module.batch`` inputs into (args, kwargs) pairs, lazily."""
    if isinstance(inputs, AsyncIterable):
        return _async_items(inputs)
    if isinstance(inputs, str | bytes | dict) or not isinstance(inputs, Iterable):
        raise TypeError(
            f"batch() needs a list or (async) iterable of inputs, got {type(inputs).__name__}"
        )
    items = (_as_item(element) for element in inputs)
    return list(items) if isinstance(inputs, Sized) else items


async def _async_items(inputs: AsyncIterable[Any]) -> AsyncIterator[Item]:
    async for element in inputs:
        yield _as_item(element)


def _as_given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The input as the caller wrote it, for ``BatchResult.input`` (undoes ``_as_item``)."""
    if not kwargs:
        return args[0] if len(args) == 1 else args
    return kwargs if not args else (args, kwargs)


def _as_item(element: Any) -> Item:
    if isinstance(element, tuple):
        return element, {}
    if isinstance(element, dict):
        return (), element
    return (element,), {}


class Call:
    """A pending module call: await it for outputs, or ``async for`` over BatchResults."""

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
        self._used = False

    @classmethod
    def single(
        cls, module: Runnable, args: tuple[Any, ...], kwargs: dict[str, Any], call: dict[str, Any]
    ) -> Call:
        settings = resolve_settings(call, module._bound_settings, module._bound_resources)
        return cls(module, [(args, kwargs)], settings, is_batch=False, total=1)

    @classmethod
    def for_batch(
        cls,
        module: Runnable,
        items: Iterable[Item] | AsyncIterable[Item],
        call: dict[str, Any],
    ) -> Call:
        settings = resolve_settings(call, module._bound_settings, module._bound_resources)
        total = len(items) if isinstance(items, Sized) else None
        return cls(module, items, settings, is_batch=True, total=total)

    def _claim(self) -> None:
        if self._used:
            raise RuntimeError(
                "a plait call can be awaited or iterated only once; call the module again"
            )
        self._used = True

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    async def result(self) -> Any:
        """Run to the end: the output (single call) or the list of outputs (batch)."""
        self._claim()
        collected: list[BatchResult] = []
        run = _Run(self, collected.append, streaming=False)
        try:
            await run.wait()
        finally:
            await run.aclose()
        collected.sort(key=lambda result: result.index)
        if not self.is_batch:
            only = collected[0]
            if only.error is not None:
                raise only.error
            return only.output
        if self.settings.streaming:
            return collected
        failures = {result.index: result.error for result in collected if result.error is not None}
        if failures:
            raise BatchError(failures, len(collected))
        return [result.output for result in collected]

    def __aiter__(self) -> AsyncIterator[BatchResult]:
        self._claim()
        return _Stream(self)


class _Stream:
    """Async iterator over BatchResults.

    Dropping it (``break`` out of ``async for``) cancels the run at once from
    ``__del__``: cancelling tasks is synchronous, so in-flight work stops
    without waiting for the event loop to finalise an async generator. That
    only works if the consumer holds the last reference, so the run reaches
    back into the stream through weak references alone.
    """

    def __init__(self, call: Call) -> None:
        self._buffer: deque[BatchResult] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._preserve = call.settings.preserve_order
        self._reorder: dict[int, BatchResult] = {}
        self._next_index = 0
        self._run = _Run(call, _weakly(self._put), streaming=True)
        self._wake_weakly = _weakly(self._wake)

    def _put(self, result: BatchResult) -> None:
        if self._preserve:
            self._reorder[result.index] = result
            while self._next_index in self._reorder:
                self._buffer.append(self._reorder.pop(self._next_index))
                self._next_index += 1
        else:
            self._buffer.append(result)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> _Stream:
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
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            run.on_change = self._wake_weakly
            try:
                await self._waiter
            except BaseException:
                await self.aclose()
                raise
            finally:
                self._waiter = None
        result = self._buffer.popleft()
        run.release()
        return result

    async def aclose(self) -> None:
        await self._run.aclose()

    def __del__(self) -> None:
        self._run.cancel()


def _weakly(method: Callable[..., None]) -> Callable[..., None]:
    """Call ``method`` while its object is alive, without keeping it alive."""
    ref = weakref.WeakMethod(method)

    def forward(*args: Any) -> None:
        target = ref()
        if target is not None:
            target(*args)

    return forward


class _Run:
    """One execution of a Call: feeds inputs to a Scheduler and reports results."""

    def __init__(self, call: Call, sink: Callable[[BatchResult], None], *, streaming: bool) -> None:
        self.call = call
        self.settings = call.settings
        self.sink = sink
        self.streaming = streaming
        self.resources: ResourceManagerLike | None = (
            None
            if call.settings.resources is None
            else as_resource_manager(call.settings.resources)
        )
        self.scheduler: Scheduler | None = None
        self.training = bool(getattr(call.module, "training", False))
        self.progress = ProgressReporter(self.settings, call.total)
        self.inflight = 0
        self.admitted = 0
        self.exhausted = False
        self.fatal: BaseException | None = None
        self.on_change: Callable[[], None] | None = None
        self._iterator: Iterator[Item] | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._admitting = False
        self._done: asyncio.Future[None] | None = None
        self._checked_plans: set[int] = set()
        self._plans: dict[tuple[Any, ...], GraphPlan] = {}

    @property
    def finished(self) -> bool:
        return self.exhausted and self.inflight == 0

    def start(self) -> None:
        if self.scheduler is not None:
            return
        self._done = asyncio.get_running_loop().create_future()
        guarded = replace(
            self.settings,
            on_task_complete=self._guarded(self.settings.on_task_complete),
            on_task_failed=self._guarded(self.settings.on_task_failed),
        )
        self.scheduler = Scheduler(
            guarded, self.resources, self._state_done, record_inputs=self.training
        )
        items = self.call.items
        if isinstance(items, AsyncIterable):
            self._feeder = asyncio.get_running_loop().create_task(self._feed(items))
        else:
            self._iterator = iter(items)
            self._admit()
        self._check_finished()

    async def wait(self) -> None:
        self.start()
        assert self._done is not None
        await self._done
        if self.fatal is not None:
            raise self.fatal

    def _admit(self) -> None:
        """Pull inputs from a sync source while there is room in flight."""
        if self._admitting or self._iterator is None:
            return
        self._admitting = True
        try:
            while (
                not self.exhausted
                and self.fatal is None
                and self.inflight < self.settings.max_inflight
            ):
                try:
                    item = next(self._iterator)
                except StopIteration:
                    self.exhausted = True
                    break
                except Exception as error:
                    self._abort(error)
                    break
                self._add(item)
        finally:
            self._admitting = False

    async def _feed(self, items: AsyncIterable[Item]) -> None:
        """Pull inputs from an async source, waiting for room when full."""
        try:
            async for item in items:
                while self.inflight >= self.settings.max_inflight:
                    self._room = asyncio.get_running_loop().create_future()
                    await self._room
                if self.fatal is not None:
                    return
                self._add(item)
        except Exception as error:
            self._abort(error)
        finally:
            self.exhausted = True
            self._check_finished()

    def _add(self, item: Item) -> None:
        args, kwargs = item
        index = self.admitted
        self.admitted += 1
        try:
            shape = (len(args), *kwargs)
            plan = self._plans.get(shape)
            if plan is None:
                plan = self._plans[shape] = plan_for(self.call.module._plait_graph(args, kwargs))
            if id(plan) not in self._checked_plans:
                if plan.aliases and self.resources is not None:
                    self.resources.check_aliases(plan.aliases)
                self._checked_plans.add(id(plan))
        except Exception as error:
            self._abort(error)
            return
        state = ExecutionState(plan, args, kwargs, index=index, input=_as_given(args, kwargs))
        self.inflight += 1
        assert self.scheduler is not None
        self.scheduler.add(state)

    def _state_done(self, state: ExecutionState) -> None:
        error = state.error()
        if error is None:
            try:
                output = state.output()
                if self.training:
                    output = _with_record(state, output)
                result = BatchResult(state.index, state.input, output)
            except Exception as failure:
                result = BatchResult(state.index, state.input, None, failure)
        else:
            result = BatchResult(state.index, state.input, None, error)
        try:
            self.progress.advance(result.ok)
        except Exception as failure:
            self._abort(failure)
        self.sink(result)
        if not self.streaming:
            self.release()
        elif self.on_change is not None:
            self.on_change()

    def release(self) -> None:
        """One result has left the run (consumed); make room for another input."""
        self.inflight -= 1
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)
        self._admit()
        self._check_finished()

    def _guarded(self, callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """Wrap a user callback so that its exception ends the run with that error.

        Raised inside the scheduler, it would kill a worker mid-bookkeeping and
        leave the run waiting forever for a node that nobody finishes.
        """
        if callback is None:
            return None

        def call(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as error:
                self._abort(error)

        return call

    def _abort(self, error: BaseException) -> None:
        if self.fatal is None:
            self.fatal = error
        if self.scheduler is not None:
            self.scheduler.cancel()
        self.exhausted = True
        self._resolve_done()

    def _check_finished(self) -> None:
        if self.finished:
            self._resolve_done()

    def _resolve_done(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if self.on_change is not None:
            self.on_change()

    def cancel(self) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel()
        if self._feeder is not None:
            self._feeder.cancel()
        self.progress.close()

    async def aclose(self) -> None:
        self.cancel()
        if self.scheduler is not None:
            await self.scheduler.aclose()
        if self._feeder is not None:
            await asyncio.gather(self._feeder, return_exceptions=True)


def _with_record(state: ExecutionState, output: Any) -> Value:
    """Wrap a training-mode output with the record that backward needs."""
    record = ForwardRecord(state.plan.graph, state.node_inputs or {}, dict(state.results), output)
    output_ids = state.plan.graph.output_ids
    ref = output_ids[0] if len(output_ids) == 1 else None
    return Value(kind_of(output), output, ref, {"record": record})


def run(module: Runnable, *args: Any, resources: Any = None, **settings: Any) -> Call:
    """Run ``module`` once with explicit resources and settings (the strongest precedence).

    A list as the only positional argument is a batch, as with a bound call.
    """
    check_setting_names(settings, where="plait.run()")
    if resources is not None:
        settings["resources"] = as_resource_manager(resources)
    if len(args) == 1 and isinstance(args[0], list):
        return Call.for_batch(module, [((item,), {}) for item in args[0]], settings)
    return Call.single(module, args, {}, settings)


def run_blocking(call: Call) -> Any:
    """Run a call to completion from synchronous code.

    With no event loop in this thread we start one. Inside a running loop (a
    Jupyter cell) we cannot block that loop's thread on itself, so the call
    runs on a fresh loop in a worker thread while this thread waits. Either
    way the loop ends with the call, so the HTTP connections opened on it are
    closed before it does.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_run_and_release(call))
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="plait-sync"
    ) as pool:
        return pool.submit(asyncio.run, _run_and_release(call)).result()


async def _run_and_release(call: Call) -> Any:
    try:
        return await call.result()
    finally:
        close = getattr(call.settings.resources, "aclose", None)
        if close is not None:
            await close()
