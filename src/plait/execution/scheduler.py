"""The scheduler: runs ready nodes of many inputs under one concurrency cap.

It is driven entirely by events. Starting an input, a node finishing and a
retry delay expiring each push work and call :meth:`Scheduler.dispatch`, which
wakes or starts workers until ``max_concurrent`` are busy. Nothing sleeps in a
polling loop: an idle worker waits on a future that new work resolves.

A dynamic node (``async def forward``) is not awaited by a worker: it starts
as a task of its own, and its child calls come back as sub-runs (see
:mod:`plait.execution.dynamic`), so a waiting forward holds no worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from plait.clients.base import ChatRequest, ChatResponse
from plait.clients.sse import DeltaSink
from plait.errors import (
    BudgetExceededError,
    ConfigError,
    ExecutionError,
    ResourcesNotBoundError,
)
from plait.execution.delivery import Delivery, streams_node
from plait.execution.dynamic import launch
from plait.execution.gate import Gate, Key, gated, gates_for
from plait.execution.hedge import Hedger, hedged
from plait.execution.hooks import RunHooks
from plait.execution.ready import ReadyQueue
from plait.execution.retry import RetryPolicy
from plait.execution.sending import bounded, call_observed, named
from plait.execution.settings import ResolvedSettings
from plait.execution.state import ExecutionState
from plait.graph import NodeKind
from plait.profiling.observer import CallProbe, NodeRun
from plait.resources.manager import ResourceManager
from plait.resources.protocol import ResourceManagerLike
from plait.resources.waiters import WaitQueue


class Scheduler:
    """Runs the nodes of admitted :class:`ExecutionState` s; reports finished inputs.

    Work is done by up to ``max_concurrent`` worker tasks that take ready
    nodes from one priority queue shared by every input. A worker that finds
    the queue empty parks on a future until new work arrives; a busy worker
    moves straight on to the next node. Compared with one task per node this
    avoids creating, scheduling and finalising a task for every LLM call.
    """

    def __init__(
        self,
        settings: ResolvedSettings,
        resources: ResourceManagerLike | None,
        on_state_done: Callable[[ExecutionState], None],
        *,
        record_inputs: bool = False,
        hooks: RunHooks | None = None,
        deltas: DeltaSink | None = None,
    ) -> None:
        self.settings = settings
        self.deltas = deltas
        self.record_inputs = record_inputs
        self.hooks = hooks
        self._node_done = hooks.on_node_done if hooks is not None else None
        self.observed = hooks is not None and hooks.observing
        self.resources = resources
        # A real manager starts ``task_timeout``'s clock when the request is
        # sent, so the wait for a slot or a rate permit is not cut short by a
        # limit meant for the request; other resources are timed as a whole.
        self._timed_on_the_wire = isinstance(resources, ResourceManager)
        self._retry = RetryPolicy(settings, resources)
        self.max_concurrent = settings.max_concurrent
        self._on_state_done = on_state_done
        self._loop = asyncio.get_running_loop()
        self.context = contextvars.copy_context()
        self._gates: dict[str, Gate] = gates_for(resources)
        self._hedgers = {alias: Hedger() for alias in self._gates} if settings.hedge else {}
        if settings.hedge and resources is not None and not self._gates:
            raise ConfigError(
                "hedge=True needs resources that are a plait ResourceManager (or a "
                f"ResourceConfig): copies run only on slots of its endpoints that would sit "
                f"idle, and {type(resources).__name__} has no slot count"
            )
        self.forwards: set[asyncio.Task[Any]] = set()
        self._ready = ReadyQueue(tuple(self._gates.values()), self.max_concurrent)
        self._workers: set[asyncio.Task[None]] = set()
        self._parked: WaitQueue[None] = WaitQueue(on_lost_wake=self._lost_wake)
        self._starting = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self.closed = False

    # -- admission ------------------------------------------------------------

    def add(self, state: ExecutionState) -> None:
        """Admit an input (or a dynamic forward's sub-run); its ready nodes join the queue."""
        if state.owner is None:
            self._ready.input_started()
        if state.done:
            self._finished(state)
            return
        for key in state.pending:
            self._ready.push(state, key)
        self.dispatch()

    def inputs_ended(self) -> None:
        """No more inputs will be admitted to this run (see :mod:`plait.execution.ready`)."""
        self._ready.inputs_ended()

    # -- dispatch -------------------------------------------------------------

    def dispatch(self) -> None:
        """Make sure queued work has workers: wake parked ones, then start new ones.

        Workers already woken or started but not yet running count as
        serving the queue, so a burst of admissions does not start a worker
        per call of ``dispatch``.
        """
        if self.closed:
            return
        waiting = len(self._ready) - self._starting
        parked = self._parked
        while waiting > 0 and parked.wake_one():
            self._starting += 1
            waiting -= 1
        workers = self._workers
        while waiting > 0 and len(workers) < self.max_concurrent:
            # In the run's context, not the caller's: a worker started from
            # inside a dynamic forward must not inherit its scope.
            worker = self._loop.create_task(self._work(), context=self.context.copy())
            workers.add(worker)
            worker.add_done_callback(workers.discard)
            self._starting += 1
            waiting -= 1

    async def _work(self) -> None:
        ready = self._ready
        run_node = self._run_observed if self.observed else self._run_node
        self._starting -= 1
        while not self.closed:
            if not ready:
                await self._parked.wait(None)
                self._starting -= 1
                continue
            state = ready.pop()
            if state is None:
                # Its node was cancelled or requeued; every node still
                # pending has an entry of its own.
                continue
            node_id = state.pop_next()
            if node_id is None:
                continue
            if node_id in state.plan.dynamic:
                launch(self, state, node_id)
                continue
            try:
                value = await run_node(state, node_id)
            except asyncio.CancelledError:
                # A cancel aimed at this worker (our own shutdown, or the loop's
                # at exit) must end it: swallowed, it would hang whoever waits.
                # Only a CancelledError raised by the node's own code fails the node.
                worker = asyncio.current_task()
                if self.closed or (worker is not None and worker.cancelling()):
                    raise
                self.fail(state, node_id, ExecutionError(f"node {node_id!r} was cancelled"))
            except Exception as error:
                self._handle_error(state, node_id, error)
            else:
                self.complete(state, node_id, value)

    async def _run_observed(self, state: ExecutionState, node_id: str) -> Any:
        """``_run_node`` with a record for observers, the cache and the budget."""
        hooks = cast(RunHooks, self.hooks)
        node = state.plan.nodes[node_id]
        attempt = state.attempts.get(node_id, 0) + state.rate_limited.get(node_id, 0)
        owner = state.owner
        shown = node_id if owner is None else owner.qualified(node_id)
        record = NodeRun(state.index, shown, node, attempt, time.perf_counter())
        if owner is not None:
            record.parent = owner.parent_run
        if node.kind is NodeKind.LLM:
            record.alias = node.module.alias
        observer = hooks.observer
        if observer is not None:
            observer.node_started(record)
        try:
            value = await self._run_node(state, node_id, record)
        except BaseException as error:
            record.finished = time.perf_counter()
            record.error = error
            if observer is not None:
                observer.node_finished(record)
            raise
        record.finished = time.perf_counter()
        record.value = value
        if observer is not None:
            observer.node_finished(record)
        return value

    async def _run_node(
        self, state: ExecutionState, node_id: str, record: NodeRun | None = None
    ) -> Any:
        node = state.plan.nodes[node_id]
        args, kwargs = state.args_for(node)
        if self.record_inputs:
            if state.node_inputs is None:
                state.node_inputs = {}
            state.node_inputs[node_id] = (args, kwargs)
        module = node.module
        if node.kind is not NodeKind.LLM:
            result = module.forward(*args, **kwargs)
            if inspect.isawaitable(result):
                return await bounded(node_id, result, self.settings.task_timeout)
            return result
        request = module.forward(*args, **kwargs)
        resources = self.resources
        if resources is None:
            raise ResourcesNotBoundError(
                f"node {node_id!r} calls LLM alias {module.alias!r} but no resources are bound; "
                "use module.bind(resources=...), ExecutionSettings(resources=...) or "
                "plait.run(module, ..., resources=...)"
            )
        attempt = state.attempts.get(node_id, 0)
        on_delta = None
        if self.deltas is not None and streams_node(resources, state, node_id):
            on_delta = Delivery(self.deltas)
        alias = module.alias
        call: Awaitable[ChatResponse]
        timeout = self.settings.task_timeout
        on_wire = timeout if self._timed_on_the_wire else None
        gate = self._gates.get(alias) if self._gates else None
        # A token stream is never hedged: two copies would both write deltas.
        hedger = self._hedgers.get(alias) if self._hedgers and on_delta is None else None
        if gate is not None and hedger is not None:
            key = state.plan.keys[node_id]
            call = self._hedged(
                hedger,
                gate,
                self._ready.order(key, state.index),
                alias,
                request,
                attempt,
                record,
                on_wire,
            )
        else:
            if record is not None:
                call = call_observed(
                    resources,
                    cast(RunHooks, self.hooks),
                    timeout,
                    alias,
                    request,
                    attempt,
                    record,
                    on_delta,
                )
            elif on_wire is not None or on_delta is not None:
                manager = cast("ResourceManager", resources)
                call = manager.complete(
                    alias, request, attempt=attempt, reply_within=on_wire, on_delta=on_delta
                )
            else:
                call = resources.complete(alias, request, attempt=attempt)
            if gate is not None:
                key = state.plan.keys[node_id]
                call = gated(gate, self._ready.order(key, state.index), call)
        if on_wire is not None:
            call = named(node_id, call)
        elif timeout is not None:
            call = bounded(node_id, call, timeout)
        if on_delta is not None:
            call = on_delta.guard(call)
        response = await call
        if record is not None:
            record.response = response
            self._charge(record, response)
        return module.parse_response(response)

    async def _hedged(
        self,
        hedger: Hedger,
        gate: Gate,
        key: Key,
        alias: str,
        request: ChatRequest,
        attempt: int,
        record: NodeRun | None,
        on_wire: float | None,
    ) -> ChatResponse:
        """The call with a second copy if it straggles; the winner's probe is the record's."""
        resources = cast(ResourceManagerLike, self.resources)

        def make() -> tuple[Awaitable[ChatResponse], CallProbe | None]:
            if record is not None:
                hooks, timeout = cast(RunHooks, self.hooks), self.settings.task_timeout
                call = call_observed(
                    resources, hooks, timeout, alias, request, attempt, record, None
                )
                return call, record.probe
            if on_wire is not None:
                manager = cast("ResourceManager", resources)
                return manager.complete(alias, request, attempt=attempt, reply_within=on_wire), None
            return resources.complete(alias, request, attempt=attempt), None

        response, probe = await hedged(hedger, gate, key, make)
        if record is not None:
            record.probe = probe
        return response

    def _charge(self, record: NodeRun, response: ChatResponse) -> None:
        """Book a reply against the budget; stop starting work once it is spent."""
        hooks = cast(RunHooks, self.hooks)
        budget = hooks.budget
        probe = record.probe
        if budget is None or (probe is not None and probe.cache_hit):
            return
        tokens = response.input_tokens + response.output_tokens
        if budget.charge(tokens, probe.cost if probe is not None else None):
            self.stop_starting()
            if hooks.on_budget_exceeded is not None:
                hooks.on_budget_exceeded()

    # -- completion -----------------------------------------------------------

    def complete(self, state: ExecutionState, node_id: str, value: Any) -> None:
        ready = state.mark_complete(node_id, value)
        node_done = self._node_done
        if node_done is not None and state.owner is None:
            node_done(state, node_id, value)
        keys = state.plan.keys
        for node in ready:
            self._ready.push(state, keys[node])
        if len(ready) > 1:
            self.dispatch()
        callback = self.settings.on_task_complete
        if callback is not None:
            callback(state.index, node_id, value)
        if state.done:
            self._finished(state)

    def _finished(self, state: ExecutionState) -> None:
        owner = state.owner
        if owner is None:
            self._ready.input_finished()
            self._on_state_done(state)
        else:
            owner.finished(state)

    def fail(self, state: ExecutionState, node_id: str, error: BaseException) -> None:
        state.mark_failed(node_id, error)
        callback = self.settings.on_task_failed
        if callback is not None:
            callback(state.index, node_id, error)
        if state.done:
            self._finished(state)

    def _handle_error(self, state: ExecutionState, node_id: str, error: BaseException) -> None:
        """Retry what may succeed later; fail the rest at once."""
        if isinstance(error, BudgetExceededError) and self.closed:
            # Stopped before sending because the budget ran out: the run is
            # ending, and this node neither failed nor should run again.
            return
        delay = self._retry.delay(state, node_id, error)
        if delay is None:
            self.fail(state, node_id, error)
        else:
            self._retry_later(state, node_id, delay)

    def _retry_later(self, state: ExecutionState, node_id: str, delay: float) -> None:
        """Run ``node_id`` again after ``delay``.

        The node stays in progress while it waits and is queued only when the
        timer fires: queued earlier, it would be dispatched as soon as another
        node of the same input became ready, cutting the delay short.
        """
        handle: asyncio.TimerHandle

        def requeue() -> None:
            self._timers.discard(handle)
            if not self.closed:
                state.requeue(node_id)
                self._ready.push(state, state.plan.keys[node_id])
                self.dispatch()

        handle = self._loop.call_later(max(delay, 0.0), requeue)
        self._timers.add(handle)

    def _lost_wake(self, _: None) -> None:
        """A parked worker was woken in the tick it was cancelled: it will not start."""
        self._starting -= 1

    # -- shutdown -------------------------------------------------------------

    def stop_starting(self) -> None:
        """Start no more nodes; nodes already running carry on to the end.

        Queued work and pending retries are dropped and idle workers exit, so
        once :meth:`wait_stopped` returns nothing of this run is running.
        """
        self.closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._ready.clear()
        self._starting += self._parked.wake_all()
        # A dynamic forward cannot finish once its calls stop starting.
        for forward in self.forwards:
            forward.cancel()

    async def wait_stopped(self) -> None:
        """Wait for every worker to finish (after :meth:`stop_starting` or :meth:`cancel`)."""
        if self._workers or self.forwards:
            await asyncio.gather(*self._workers, *self.forwards, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel everything still running and wait until it has stopped."""
        self.cancel()
        await self.wait_stopped()

    def cancel(self) -> None:
        """Cancel all work now; safe to call from synchronous code (e.g. ``__del__``)."""
        self.closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._ready.clear()
        self._parked.clear()
        for worker in self._workers:
            worker.cancel()
        for forward in self.forwards:
            forward.cancel()
