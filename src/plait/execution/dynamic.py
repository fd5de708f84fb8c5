"""Dynamic modules: an ``async def forward`` runs as a task on real values.

The scheduler starts the forward as a task of its own and moves on, so a
forward that is waiting holds no worker: only the calls it makes take
slots, and nesting dynamic modules cannot deadlock however deep it goes.
Inside the task a context variable names the :class:`DynamicScope`;
``Module.__call__`` finds it and hands the call here. The child's graph
(traced once per shape, as for any call) runs as a *sub-run*: an
:class:`ExecutionState` added to the same scheduler under the parent's
input index, so its nodes sort with that input (depth-first), and limits,
retries, the cache, budgets, usage and observers apply to it unchanged.
The call returns a future of the child's real output.

``task_timeout`` bounds a dynamic node's own time: the clock runs only while
none of its calls is outstanding (each call has its own timeout), so a loop
of slow calls is not cut short by a limit meant for one call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from contextvars import Context, ContextVar
from typing import Any, NamedTuple, Protocol

from plait.errors import ExecutionError, TaskTimeoutError
from plait.execution.inputs import check_one_input
from plait.execution.settings import ResolvedSettings
from plait.execution.state import ExecutionState, forward_record, plan_for
from plait.execution.tape import build_tape
from plait.graph import ForwardRecord, GraphNode
from plait.profiling.observer import NodeRun, RunObserver

_scope: ContextVar[DynamicScope | None] = ContextVar("plait_dynamic_scope", default=None)


def current_scope() -> DynamicScope | None:
    """The dynamic forward running in this context, or None."""
    return _scope.get()


class Runner(Protocol):
    """What a dynamic node needs from the scheduler (structural: it sits above this file)."""

    record_inputs: bool
    resources: Any
    settings: ResolvedSettings
    observed: bool
    closed: bool
    context: Context
    forwards: set[asyncio.Task[Any]]

    @property
    def hooks(self) -> RunHooksLike | None: ...

    def add(self, state: ExecutionState) -> None: ...

    def complete(self, state: ExecutionState, node_id: str, value: Any) -> None: ...

    def fail(self, state: ExecutionState, node_id: str, error: BaseException) -> None: ...

    def dispatch(self) -> None: ...


class RunHooksLike(Protocol):
    """The run's optional features a dynamic node reports to (see ``RunHooks``)."""

    @property
    def observer(self) -> RunObserver | None: ...

    @property
    def replay(self) -> Callable[[ExecutionState, str], Replay | None] | None: ...


class Replay(Protocol):
    """Stored calls of one dynamic forward from an earlier run, and where new ones go."""

    def lookup(self, seq: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The stored output of call ``seq`` if it matches, else :data:`MISSING`."""
        ...

    def store(
        self, seq: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None: ...

    def nested(self, seq: int, path: str, node: GraphNode) -> Replay | None:
        """The stored calls of a dynamic node that call ``seq`` ran (at ``path``), if usable."""
        ...


MISSING: Any = object()
"""What :meth:`Replay.lookup` returns when a call has to run live."""


class TapeEntry(NamedTuple):
    """One finished child call, as training mode records it."""

    seq: int
    module: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    subrecord: ForwardRecord | None


class DynamicScope:
    """One running dynamic forward: where its child calls go and what they leave behind."""

    __slots__ = (
        "_loop",
        "_names",
        "_resumed",
        "_timer",
        "node",
        "node_id",
        "outstanding",
        "parent_run",
        "qualified_id",
        "replay",
        "runner",
        "seq",
        "state",
        "tape",
        "task",
        "timed_out",
        "timeout",
    )

    def __init__(
        self,
        runner: Runner,
        state: ExecutionState,
        node_id: str,
        parent_run: Any,
        replay: Replay | None,
    ) -> None:
        self.runner = runner
        self.state = state
        self.node_id = node_id
        self.node: GraphNode = state.plan.nodes[node_id]
        self.parent_run = parent_run
        self.replay = replay
        self.seq = 0
        self.tape: list[TapeEntry] | None = [] if runner.record_inputs else None
        self._loop = asyncio.get_running_loop()
        self.task: asyncio.Task[Any] | None = None
        self.outstanding = 0
        self.timeout: float | None = None
        self.timed_out = False
        self._timer: asyncio.TimerHandle | None = None
        self._resumed = 0.0
        self._names: dict[int, str] | None = None
        owner = state.owner
        self.qualified_id = node_id if owner is None else owner.qualified(node_id)

    def child_name(self, module: Any) -> str:
        """The attribute name of ``module`` in this forward's module (observers only)."""
        names = self._names
        if names is None:
            names = self._names = {
                id(child): name for name, child in self.node.module.named_modules() if name
            }
        return names.get(id(module)) or type(module).__name__.lower()

    def start_clock(self, timeout: float | None) -> None:
        """Bound the forward's own time (outside its calls) by ``timeout`` seconds."""
        self.timeout = timeout
        if timeout is not None:
            self._resume()

    def _resume(self) -> None:
        assert self.timeout is not None
        self._resumed = time.monotonic()
        self._timer = self._loop.call_later(max(self.timeout, 0.0), self._expire)

    def _pause(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            assert self.timeout is not None
            self.timeout -= time.monotonic() - self._resumed

    def _expire(self) -> None:
        self._timer = None
        self.timed_out = True
        if self.task is not None:
            self.task.cancel()

    def call_done(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and self.timeout is not None and not self.timed_out:
            self._resume()

    def call(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Start ``module(*args, **kwargs)`` as a sub-run; returns a future of its output."""
        check_one_input(args, module, self.qualified_id)
        seq = self.seq
        self.seq = seq + 1
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.replay is not None:
            stored = self.replay.lookup(seq, module, args, kwargs)
            if stored is not MISSING:
                future.set_result(stored)
                return future
        state = ExecutionState(
            plan_for(module._plait_graph(args, kwargs)), args, kwargs, index=self.state.index
        )
        child = ChildCall(self, seq, module, args, kwargs, future)
        state.owner = child
        self.outstanding += 1
        if self.outstanding == 1:
            self._pause()
        future.add_done_callback(child.detach)
        child.state = state
        self.runner.add(state)
        return future


class ChildCall:
    """One call a dynamic forward made: it owns the sub-run and resolves the future."""

    __slots__ = ("args", "future", "kwargs", "module", "parent_run", "scope", "seq", "state")

    def __init__(
        self,
        scope: DynamicScope,
        seq: int,
        module: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: asyncio.Future[Any],
    ) -> None:
        self.scope = scope
        self.seq = seq
        self.module = module
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.parent_run = scope.parent_run
        self.state: ExecutionState | None = None

    def finished(self, state: ExecutionState) -> None:
        # The sub-run is over: dropping it breaks the cycle state.owner ->
        # self -> state, so reference counting frees both at once instead of
        # leaving them to the cyclic collector (a third of a call's CPU).
        self.state = None
        future = self.future
        if future.done():
            return
        error = state.error()
        if error is not None:
            future.set_exception(error)
            return
        try:
            output = state.output()
        except Exception as failure:
            future.set_exception(failure)
            return
        scope = self.scope
        if scope.tape is not None:
            module, inner = _inner(state, self.module, output)
            scope.tape.append(TapeEntry(self.seq, module, self.args, self.kwargs, output, inner))
        if scope.replay is not None:
            scope.replay.store(self.seq, self.module, self.args, self.kwargs, output)
        future.set_result(output)

    def qualified(self, node_id: str) -> str:
        scope = self.scope
        name = scope.child_name(self.module)
        own = f"{scope.qualified_id}.{name}#{self.seq}"
        state = self.state
        return own if state is None or state.plan.node_count == 1 else f"{own}.{node_id}"

    def detach(self, future: asyncio.Future[Any]) -> None:
        """The call is over; if the forward stopped waiting, start nothing more of it."""
        self.scope.call_done()
        if future.cancelled() and self.state is not None:
            self.state.abandon()


def _inner(state: ExecutionState, called: Any, output: Any) -> tuple[Any, ForwardRecord | None]:
    """The module backward runs for a call, and the record it walks inside it.

    A call that ran one node is that node (its own module's backward, and
    the tape beneath it if it is dynamic); a traced composite is walked
    through its sub-run's record.
    """
    plan = state.plan
    if plan.node_count == 1:
        only = next(iter(plan.remaining))
        tapes = state.tapes
        return plan.nodes[only].module, None if tapes is None else tapes.get(only)
    return called, forward_record(state, output, None)


def launch(runner: Runner, state: ExecutionState, node_id: str) -> None:
    """Start a dynamic node's forward as a task; the node completes when the task ends.

    The task runs in the run's own context with its scope set, so a forward
    started from inside another forward does not inherit that one's scope.
    """
    hooks = runner.hooks
    record = None
    if runner.observed:
        owner = state.owner
        shown = node_id if owner is None else owner.qualified(node_id)
        record = NodeRun(state.index, shown, state.plan.nodes[node_id], 0, time.perf_counter())
        if owner is not None:
            record.parent = owner.parent_run
        if hooks is not None and hooks.observer is not None:
            hooks.observer.node_started(record)
    replay = None
    if hooks is not None and hooks.replay is not None:
        owner = state.owner
        if owner is None:
            if state.checkpoint is not None:
                replay = hooks.replay(state, node_id)
        elif isinstance(owner, ChildCall) and owner.scope.replay is not None:
            # A dynamic node inside a call of a forward replays its own calls too.
            path = owner.qualified(node_id)
            replay = owner.scope.replay.nested(owner.seq, path, state.plan.nodes[node_id])
    try:
        node = state.plan.nodes[node_id]
        args, kwargs = state.args_for(node)
        if runner.record_inputs:
            if state.node_inputs is None:
                state.node_inputs = {}
            state.node_inputs[node_id] = (args, kwargs)
        scope = DynamicScope(runner, state, node_id, record, replay)
        own = runner.context.copy()
        own.run(_scope.set, scope)
        task = asyncio.get_running_loop().create_task(
            _settled(node.module.forward(*args, **kwargs)), context=own
        )
    except Exception as error:
        runner.fail(state, node_id, error)
        return
    scope.task = task
    scope.start_clock(runner.settings.task_timeout)
    runner.forwards.add(task)
    task.add_done_callback(lambda done: _finish(runner, scope, done, record))


def _finish(
    runner: Runner, scope: DynamicScope, task: asyncio.Task[Any], record: NodeRun | None
) -> None:
    """The forward ended: complete or fail its node (never retried as a whole:
    each call inside it has had its own retries)."""
    runner.forwards.discard(task)
    # Task -> its context -> scope -> task is a cycle; break it as for a child call.
    scope.task = None
    state, node_id = scope.state, scope.node_id
    error: BaseException | None = None
    value: Any = None
    if task.cancelled():
        if scope.timed_out:
            error = TaskTimeoutError(
                f"node {node_id!r} took longer than "
                f"task_timeout={runner.settings.task_timeout}s outside its calls"
            )
        elif runner.closed:
            return
        else:
            error = ExecutionError(f"dynamic node {node_id!r} was cancelled")
    else:
        error = task.exception()
        if error is None:
            value = task.result()
            if scope.tape:
                # With no calls there is nothing to walk: the node is a plain
                # leaf, and its module's own backward applies.
                if state.tapes is None:
                    state.tapes = {}
                args, kwargs = (state.node_inputs or {}).get(node_id, ((), {}))
                state.tapes[node_id] = build_tape(
                    scope.node.module, args, kwargs, scope.tape, value, runner.resources
                )
    if record is not None:
        record.finished = time.perf_counter()
        record.error, record.value = error, value
        hooks = runner.hooks
        if hooks is not None and hooks.observer is not None:
            hooks.observer.node_finished(record)
    if error is not None:
        runner.fail(state, node_id, error)
    else:
        runner.complete(state, node_id, value)
    # No worker finished this node, so none is about to look at the queue.
    runner.dispatch()


async def _settled(forward: Coroutine[Any, Any, Any]) -> Any:
    """The forward's result; a child's future returned without ``await`` is awaited."""
    value = await forward
    if isinstance(value, asyncio.Future):
        value = await value
    return value
