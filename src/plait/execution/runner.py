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
import sys
import weakref
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sized,
)
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from plait.errors import BatchError, CheckpointError, ConfigError
from plait.execution.budget import Budget
from plait.execution.progress import ProgressReporter
from plait.execution.results import BatchResult
from plait.execution.scheduler import RunHooks, Scheduler
from plait.execution.settings import ResolvedSettings, check_setting_names, resolve_settings
from plait.execution.state import ExecutionState, GraphPlan, plan_for
from plait.graph import ForwardRecord, InferenceGraph
from plait.profiling.observer import RunObserver, combine
from plait.profiling.profile import Profile, Profiler, default_profile_path
from plait.resources.protocol import ResourceManagerLike, as_resource_manager
from plait.values import Value, with_record

if TYPE_CHECKING:
    from plait.storage.cache import ResponseCache
    from plait.storage.checkpoint_session import CheckpointSession

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
        self._used = False
        self._coroutine: Coroutine[Any, Any, Any] | None = None

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
            raise RuntimeError(_USED_TWICE)
        self._used = True

    def __await__(self) -> Generator[Any, None, Any]:
        if self._coroutine is not None:
            raise RuntimeError(_USED_TWICE)
        return self._as_coroutine().__await__()

    def send(self, value: Any) -> Any:
        return self._as_coroutine().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._as_coroutine().throw(typ, val, tb)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()

    def _as_coroutine(self) -> Coroutine[Any, Any, Any]:
        if self._coroutine is None:
            self._coroutine = self.result()
        return self._coroutine

    async def result(self) -> Any:
        """Run to the end: the output (single call) or the list of outputs (batch)."""
        self._claim()
        collected: list[BatchResult] = []
        run = _Run(self, collected.append, streaming=False)
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
                if run.fatal is not None:
                    raise run.fatal
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
        self.checkpoint: CheckpointSession | None = None
        self.observer: RunObserver | None = None
        self.profiler: Profiler | None = None
        self.budget: Budget | None = None
        self.stopping = False
        self._stopper: asyncio.Task[None] | None = None
        self._ended = False

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
        try:
            hooks = self._hooks()
        except Exception as error:
            hooks = None
            self._abort(error)
        self.scheduler = Scheduler(
            guarded, self.resources, self._state_done, record_inputs=self.training, hooks=hooks
        )
        if self.fatal is not None:
            self.observer = self.profiler = None  # nothing ran, so nothing to report
            return
        if self.observer is not None:
            self.observer.run_started(type(self.call.module).__name__, self.call.total)
        items = self.call.items
        if isinstance(items, AsyncIterable):
            self._feeder = asyncio.get_running_loop().create_task(self._feed(items))
        else:
            self._iterator = iter(items)
            self._admit()
        self._check_finished()

    def _hooks(self) -> RunHooks | None:
        """Set up what the settings ask for beyond plain execution (None if nothing)."""
        settings = self.settings
        profiler = None
        if settings.profile or settings.profile_path is not None:
            path = settings.profile_path
            profiler = self.profiler = Profiler(
                path if path is not None else default_profile_path()
            )
        self.observer = combine([_span_observer(settings), profiler])
        cache: ResponseCache | None = None
        if settings.cache is not None and settings.cache is not False:
            from plait.storage.cache import open_cache

            cache = open_cache(settings.cache)
        if settings.max_tokens_total is not None or settings.max_cost is not None:
            self.budget = Budget(settings.max_tokens_total, settings.max_cost)
        # Imported here: the resource layer imports this package, not the reverse.
        from plait.resources.manager import ResourceManager

        probes = isinstance(self.resources, ResourceManager)
        needs_manager = [
            name
            for name, used in (("cache", cache is not None), ("max_cost", settings.max_cost))
            if used
        ]
        if needs_manager and not probes:
            raise ConfigError(
                f"{' and '.join(needs_manager)} need(s) resources that are a plait "
                f"ResourceManager (or a ResourceConfig), got {type(self.resources).__name__}"
            )
        if settings.checkpoint_dir is not None:
            if self.training:
                raise ConfigError(
                    "checkpoint_dir cannot be used in training mode: restored outputs would lack "
                    "the forward record that backward() needs; call module.eval() first"
                )
            from plait.storage.checkpoint_session import CheckpointSession

            self.checkpoint = CheckpointSession(
                settings.checkpoint_dir,
                module=self.call.module,
                total=self.call.total,
                mismatch=settings.checkpoint_mismatch,
                buffer_size=settings.checkpoint_buffer_size,
                flush_interval=settings.checkpoint_flush_interval,
            )
        if (self.observer, cache, self.budget, self.checkpoint) == (None, None, None, None):
            return None
        return RunHooks(
            observer=self.observer,
            cache=cache,
            budget=self.budget,
            probes=probes,
            on_node_done=self._node_done if self.checkpoint is not None else None,
            on_budget_exceeded=self._budget_exceeded if self.budget is not None else None,
        )

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
                and not self.stopping
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
                if self.fatal is not None or self.stopping:
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
                self._check_plan(plan)
                self._checked_plans.add(id(plan))
            stored = None
            if self.checkpoint is not None:
                binding = self.checkpoint.bind(plan.graph, shape)
                key, stored, finished = self.checkpoint.restore(binding, index, args, kwargs)
        except Exception as error:
            self._abort(error)
            return
        given = _as_given(args, kwargs)
        self.inflight += 1
        if self.observer is not None:
            self.observer.input_started(index)
        if stored is not None:
            self._deliver(BatchResult(index, given, stored[0]), restored=True)
            return
        state = ExecutionState(plan, args, kwargs, index=index, input=given)
        if self.checkpoint is not None:
            state.checkpoint = key
            if finished:
                state.restore(finished)
        assert self.scheduler is not None
        self.scheduler.add(state)

    def _check_plan(self, plan: GraphPlan) -> None:
        """Checks made once per graph, before any of its requests is sent."""
        if not plan.aliases or self.resources is None:
            return
        self.resources.check_aliases(plan.aliases)
        if self.settings.max_cost is not None:
            priced = getattr(self.resources, "priced", None)
            unpriced = [alias for alias in plan.aliases if priced is None or not priced(alias)]
            if unpriced:
                raise ConfigError(
                    f"max_cost needs a price for every endpoint, but alias(es) {unpriced} have "
                    "endpoints without input_price/output_price; set them in the endpoint "
                    "config or with ResourceConfig.with_prices({model: {...}})"
                )

    def _state_done(self, state: ExecutionState) -> None:
        error = state.error()
        if error is None:
            try:
                output = state.output()
                if self.checkpoint is not None:
                    self.checkpoint.input_done(state.checkpoint, state.input, output)
                if self.training:
                    output = _with_record(state, output, self.settings.resources)
                result = BatchResult(state.index, state.input, output)
            except CheckpointError as failure:
                self._abort(failure)
                result = BatchResult(state.index, state.input, None, failure)
            except Exception as failure:
                result = BatchResult(state.index, state.input, None, failure)
        else:
            result = BatchResult(state.index, state.input, None, error)
            if self.checkpoint is not None:
                self._save(self.checkpoint.input_failed, state.checkpoint)
        self._deliver(result, restored=False)

    def _deliver(self, result: BatchResult, *, restored: bool) -> None:
        if self.observer is not None:
            self.observer.input_finished(result.index, result.error, restored)
        try:
            self.progress.advance(result.ok)
        except Exception as failure:
            self._abort(failure)
        self.sink(result)
        if not self.streaming:
            self.release()
        elif self.on_change is not None:
            self.on_change()

    def _node_done(self, state: ExecutionState, node_id: str, value: Any) -> None:
        checkpoint = self.checkpoint
        if checkpoint is not None and node_id in state.results:
            self._save(
                checkpoint.node_done, state.checkpoint, node_id, state.plan.nodes[node_id], value
            )

    def _save(self, record: Callable[..., None], *args: Any) -> None:
        """Hand something to the checkpoint; a failure to store ends the run with its error."""
        try:
            record(*args)
        except CheckpointError as error:
            self._abort(error)

    def _budget_exceeded(self) -> None:
        """The scheduler has stopped starting work; end the run once running nodes finish."""
        self.stopping = True
        self._stopper = asyncio.get_running_loop().create_task(self._stop_when_idle())

    async def _stop_when_idle(self) -> None:
        assert self.scheduler is not None
        assert self.budget is not None
        await self.scheduler.wait_stopped()
        if self._done is None or self._done.done():
            return
        if not (self.exhausted and self.admitted == self.progress.done):
            directory = self.settings.checkpoint_dir
            self.fatal = self.budget.error(
                finished=self.progress.done,
                total=self.call.total,
                checkpoint_dir=None if directory is None else str(directory),
            )
        self.exhausted = True
        self._resolve_done()

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
        if self._stopper is not None:
            self._stopper.cancel()
        self.progress.close()
        self._end()

    async def aclose(self) -> None:
        self.cancel()
        if self.scheduler is not None:
            await self.scheduler.aclose()
        if self._feeder is not None:
            await asyncio.gather(self._feeder, return_exceptions=True)
        if self._stopper is not None:
            await asyncio.gather(self._stopper, return_exceptions=True)

    def _end(self) -> None:
        """Close what the run opened, once: checkpoint, spans, profile.

        A checkpoint that cannot be written is the run's error, so a result is
        never returned while the work behind it silently failed to save.
        """
        if self._ended or self.scheduler is None:
            return
        self._ended = True
        complete = self.finished and self.fatal is None
        if self.checkpoint is not None:
            status = (
                "stopped" if not complete else "incomplete" if self.progress.failed else "finished"
            )
            try:
                self.checkpoint.close(status)
            except CheckpointError as error:
                if self.fatal is None:
                    self.fatal = error
        if self.observer is not None:
            self.observer.run_finished(self.fatal)
        if self.profiler is not None:
            self.call.profile = self.profiler.profile


def _span_observer(settings: ResolvedSettings) -> RunObserver | None:
    """Spans for this run, if anyone can receive them.

    An OpenTelemetry SDK can only have been set up by code that imported the
    API, so until something has, plait does not import it either.
    """
    if settings.tracer_provider is None and "opentelemetry.trace" not in sys.modules:
        return None
    from plait.profiling.telemetry import SpanObserver, tracer_for

    tracer = tracer_for(settings.tracer_provider)
    if tracer is None:
        return None
    return SpanObserver(tracer, capture_content=settings.capture_content)


def _with_record(state: ExecutionState, output: Any, resources: Any) -> Value:
    """Wrap a training-mode output with the record that backward needs.

    The record also keeps the resources the run used, so a loss computed on
    the output and the backward pass through it reach the same endpoints
    without the caller binding them again.
    """
    record = ForwardRecord(
        state.plan.graph, state.node_inputs or {}, dict(state.results), output, resources
    )
    output_ids = state.plan.graph.output_ids
    return with_record(output, output_ids[0] if len(output_ids) == 1 else None, record)


def run(module: Runnable, *args: Any, resources: Any = None, **settings: Any) -> Call:
    """Run ``module`` once with explicit resources and settings (the strongest precedence).

    A list as the only positional argument is a batch, as with a bound call.
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
