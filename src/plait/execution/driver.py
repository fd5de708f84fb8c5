"""The per-run driver: admits inputs, hands them to the scheduler, delivers results.

Inputs are admitted lazily, at most ``max_inflight`` in flight, so a stream
of a million inputs never sits in memory at once. A result leaves the run
when its sink says so: at once when a call collects them all, only once the
consumer has taken it when streaming. The driver also ends the run, closing
checkpoint, spans and profile exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from plait.clients.sse import DeltaSink
from plait.errors import CheckpointError, ConfigError, UnstorableError, WriterError
from plait.execution.budget import Budget
from plait.execution.hooks import RunFeatures, flush_caches, run_features
from plait.execution.inputs import Item, as_given
from plait.execution.progress import ProgressReporter
from plait.execution.replay import CallStore
from plait.execution.results import BatchResult
from plait.execution.scheduler import Scheduler
from plait.execution.settings import ResolvedSettings
from plait.execution.state import ExecutionState, GraphPlan, forward_record, plan_for
from plait.graph import InferenceGraph
from plait.profiling.observer import RunObserver
from plait.profiling.profile import Profile, Profiler
from plait.resources.protocol import ResourceManagerLike, as_resource_manager
from plait.values import Value, with_record

if TYPE_CHECKING:
    from plait.storage.checkpoint_session import CheckpointSession


class Runnable(Protocol):
    """What the engine needs from a module."""

    def resolved_settings(self, **overrides: Any) -> ResolvedSettings: ...

    def _plait_graph(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> InferenceGraph: ...


class Job(Protocol):
    """What a run executes; the run writes the profile back when it ends."""

    module: Runnable
    items: Iterable[Item] | AsyncIterable[Item]
    settings: ResolvedSettings
    total: int | None
    profile: Profile | None
    deltas: DeltaSink | None
    """Where the output node's text deltas go, for a token stream (else None)."""


class RunDriver:
    """One execution of a job: feeds its inputs to a Scheduler and reports results."""

    def __init__(self, call: Job, sink: Callable[[BatchResult], None], *, streaming: bool) -> None:
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
        self._unstorable: dict[int, UnstorableError] = {}
        self.calls: CallStore | None = None
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
            features = run_features(
                self.settings,
                self.resources,
                module=self.call.module,
                total=self.call.total,
                training=self.training,
            )
        except Exception as error:
            features = RunFeatures()  # nothing ran, so nothing to report
            self._abort(error)
        self.checkpoint = features.checkpoint
        replay = None
        if features.checkpoint is not None:
            self.calls = CallStore(features.checkpoint)
            replay = self.calls.replay
        self.observer = features.observer
        self.profiler = features.profiler
        self.budget = features.budget
        self.scheduler = Scheduler(
            guarded,
            self.resources,
            self._state_done,
            record_inputs=self.training,
            hooks=features.hooks(self._node_done, self._budget_exceeded, replay),
            deltas=self.call.deltas,
        )
        if self.fatal is not None:
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
                    self._inputs_ended()
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
            self._inputs_ended()
            self._check_finished()

    def _inputs_ended(self) -> None:
        self.exhausted = True
        if self.scheduler is not None:
            self.scheduler.inputs_ended()

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
            unstorable = None
            if self.checkpoint is not None:
                binding = self.checkpoint.bind(plan.graph, shape)
                try:
                    key, stored, finished = self.checkpoint.restore(binding, index, args, kwargs)
                except UnstorableError as error:
                    unstorable = error  # this input fails; the others go on
        except Exception as error:
            self._abort(error)
            return
        given = as_given(args, kwargs)
        self.inflight += 1
        if self.observer is not None:
            self.observer.input_started(index)
        if unstorable is not None:
            self._deliver(BatchResult(index, given, None, unstorable), restored=False)
            return
        if stored is not None:
            self._deliver(BatchResult(index, given, stored[0]), restored=True)
            return
        state = ExecutionState(plan, args, kwargs, index=index, input=given)
        if self.checkpoint is not None:
            state.checkpoint = key
            if finished:
                state.restore(finished)
                if self.calls is not None and plan.dynamic:
                    self.calls.adopt(index, finished)
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
        if self.calls is not None:
            self.calls.forget(state.index)
        error = state.error()
        if self._unstorable and error is None:
            error = self._unstorable.pop(state.index, None)
        if error is None:
            try:
                output = state.output()
                if self.checkpoint is not None:
                    self.checkpoint.input_done(state.checkpoint, state.input, output)
                if self.training:
                    output = _with_record(state, output, self.settings.resources)
                result = BatchResult(state.index, state.input, output)
            except UnstorableError as failure:
                result = BatchResult(state.index, state.input, None, failure)
                assert self.checkpoint is not None
                self._save(self.checkpoint.input_failed, state.checkpoint)
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
            try:
                checkpoint.node_done(state.checkpoint, node_id, state.plan.nodes[node_id], value)
            except UnstorableError as error:
                # The input fails with it once its running nodes settle.
                self._unstorable.setdefault(state.index, error)
            except CheckpointError as error:
                self._abort(error)

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
        """Close what the run opened, once: checkpoint, cache writes, spans, profile.

        The run returns only once its checkpoint and cache rows are on disk,
        and a store that cannot be written is the run's error, so a result is
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
        try:
            flush_caches()
        except WriterError as error:
            if self.fatal is None:
                self.fatal = error
        if self.observer is not None:
            self.observer.run_finished(self.fatal)
        if self.profiler is not None:
            self.call.profile = self.profiler.profile


def _with_record(state: ExecutionState, output: Any, resources: Any) -> Value:
    """Wrap a training-mode output with the record that backward needs.

    The record also keeps the resources the run used, so a loss computed on
    the output and the backward pass through it reach the same endpoints
    without the caller binding them again.
    """
    record = forward_record(state, output, resources)
    output_ids = state.plan.graph.output_ids
    return with_record(output, output_ids[0] if len(output_ids) == 1 else None, record)
