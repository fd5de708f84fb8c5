"""The scheduler: runs ready nodes of many inputs under one concurrency cap.

It is driven entirely by events. Starting an input, a node finishing and a
retry delay expiring each push work and call :meth:`Scheduler.dispatch`, which
starts nodes until ``max_concurrent`` are running. Nothing sleeps in a polling
loop, and no worker coroutines sit idle; an LLM node is one asyncio task from
start to finish, and every other node runs inline the moment it is ready, since
it is plain Python on values already in memory.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import random
from collections.abc import Callable
from functools import partial
from itertools import count
from typing import Any

from plait.errors import (
    PlaitError,
    RateLimitError,
    ResourcesNotBoundError,
    TaskTimeoutError,
    TransientError,
)
from plait.execution.resources import ResourceManagerLike
from plait.execution.settings import ResolvedSettings
from plait.execution.state import ExecutionState
from plait.graph import NodeKind

MAX_RATE_LIMIT_REQUEUES = 50
"""A node pushed back by 429s more often than this fails: the endpoint is not recovering."""


class Scheduler:
    """Runs the nodes of admitted :class:`ExecutionState` s; reports finished inputs."""

    def __init__(
        self,
        settings: ResolvedSettings,
        resources: ResourceManagerLike | None,
        on_state_done: Callable[[ExecutionState], None],
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.max_concurrent = settings.max_concurrent
        self._on_state_done = on_state_done
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[int, int, int, int, ExecutionState]] = []
        self._tiebreak = count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._dispatching = False
        self.running = 0
        self.peak_running = 0
        self.closed = False

    # -- admission ------------------------------------------------------------

    def add(self, state: ExecutionState) -> None:
        """Admit an input; its ready nodes join the queue."""
        if state.done:
            self._on_state_done(state)
            return
        for _ in range(len(state.pending)):
            self._push(state)
        self.dispatch()

    def _push(self, state: ExecutionState) -> None:
        key = state.next_key()
        if key is not None:
            heapq.heappush(self._heap, (key[0], state.index, key[1], next(self._tiebreak), state))

    # -- dispatch -------------------------------------------------------------

    def dispatch(self) -> None:
        """Start queued nodes while there is capacity.

        Re-entrant calls (a node completing inline while we dispatch) only
        queue work; the outer loop picks it up, so the stack never grows.
        """
        if self._dispatching or self.closed:
            return
        self._dispatching = True
        try:
            heap = self._heap
            while heap and self.running < self.max_concurrent:
                state = heapq.heappop(heap)[4]
                node_id = state.pop_next()
                if node_id is not None:
                    self._start(state, node_id)
        finally:
            self._dispatching = False

    def _start(self, state: ExecutionState, node_id: str) -> None:
        node = state.plan.nodes[node_id]
        if node.kind is NodeKind.LLM:
            coro = self._run_llm(state, node_id)
        else:
            try:
                args, kwargs = state.args_for(node)
                result = node.module.forward(*args, **kwargs)
            except Exception as error:
                self._fail(state, node_id, error)
                return
            if not inspect.isawaitable(result):
                self._complete(state, node_id, result)
                return
            coro = self._await_op(result)
        self.running += 1
        if self.running > self.peak_running:
            self.peak_running = self.running
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(partial(self._on_task_done, state, node_id))

    async def _await_op(self, awaitable: Any) -> Any:
        timeout = self.settings.task_timeout
        if timeout is None:
            return await awaitable
        async with asyncio.timeout(timeout):
            return await awaitable

    async def _run_llm(self, state: ExecutionState, node_id: str) -> Any:
        node = state.plan.nodes[node_id]
        module = node.module
        args, kwargs = state.args_for(node)
        request = module.forward(*args, **kwargs)
        resources = self.resources
        if resources is None:
            raise ResourcesNotBoundError(
                f"node {node_id!r} calls LLM alias {module.alias!r} but no resources are bound; "
                "use module.bind(resources=...), ExecutionSettings(resources=...) or "
                "plait.run(module, ..., resources=...)"
            )
        attempt = state.attempts.get(node_id, 0)
        timeout = self.settings.task_timeout
        if timeout is None:
            response = await resources.complete(module.alias, request, attempt=attempt)
        else:
            try:
                async with asyncio.timeout(timeout):
                    response = await resources.complete(module.alias, request, attempt=attempt)
            except TimeoutError as error:
                raise TaskTimeoutError(
                    f"node {node_id!r} took longer than task_timeout={timeout}s"
                ) from error
        return module.parse_response(response)

    # -- completion -----------------------------------------------------------

    def _on_task_done(self, state: ExecutionState, node_id: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self.running -= 1
        if self.closed:
            return
        if task.cancelled():
            self._fail(state, node_id, asyncio.CancelledError(f"node {node_id!r} was cancelled"))
        else:
            error = task.exception()
            if error is None:
                self._complete(state, node_id, task.result())
            else:
                self._handle_error(state, node_id, error)
        self.dispatch()

    def _complete(self, state: ExecutionState, node_id: str, value: Any) -> None:
        for _ in state.mark_complete(node_id, value):
            self._push(state)
        callback = self.settings.on_task_complete
        if callback is not None:
            callback(node_id, value)
        if state.done:
            self._on_state_done(state)

    def _fail(self, state: ExecutionState, node_id: str, error: BaseException) -> None:
        state.mark_failed(node_id, error)
        callback = self.settings.on_task_failed
        if callback is not None:
            callback(node_id, error)
        if state.done:
            self._on_state_done(state)

    def _handle_error(self, state: ExecutionState, node_id: str, error: BaseException) -> None:
        """Retry what may succeed later; fail the rest at once."""
        if isinstance(error, RateLimitError):
            requeues = state.rate_limited.get(node_id, 0) + 1
            state.rate_limited[node_id] = requeues
            if requeues <= MAX_RATE_LIMIT_REQUEUES:
                delay = (
                    error.retry_after if error.retry_after is not None else self._backoff(requeues)
                )
                self._retry_later(state, node_id, delay)
                return
        elif isinstance(error, TransientError | TaskTimeoutError) or _is_transient_os_error(error):
            attempts = state.attempts.get(node_id, 0) + 1
            if attempts <= self._retry_budget(state, node_id):
                state.attempts[node_id] = attempts
                self._retry_later(state, node_id, self._backoff(attempts))
                return
        self._fail(state, node_id, error)

    def _retry_budget(self, state: ExecutionState, node_id: str) -> int:
        node = state.plan.nodes[node_id]
        if node.kind is NodeKind.LLM and self.resources is not None:
            budget = self.resources.retry_budget(node.module.alias)
            if budget is not None:
                return budget
        return self.settings.max_task_retries

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with half jitter, so retries of a burst spread out."""
        base: float = self.settings.task_retry_delay * 2.0 ** (attempt - 1)
        return min(base, 60.0) * (0.5 + random.random() / 2)

    def _retry_later(self, state: ExecutionState, node_id: str, delay: float) -> None:
        state.requeue(node_id)
        handle: asyncio.TimerHandle

        def requeue() -> None:
            self._timers.discard(handle)
            if not self.closed:
                self._push(state)
                self.dispatch()

        handle = self._loop.call_later(max(delay, 0.0), requeue)
        self._timers.add(handle)

    # -- shutdown -------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._tasks and not self._timers and not self._heap

    async def aclose(self) -> None:
        """Cancel everything still running and wait until it has stopped."""
        self.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def cancel(self) -> None:
        """Cancel all work now; safe to call from synchronous code (e.g. ``__del__``)."""
        self.closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._heap.clear()
        for task in self._tasks:
            task.cancel()


def _is_transient_os_error(error: BaseException) -> bool:
    return isinstance(error, ConnectionError | TimeoutError) and not isinstance(error, PlaitError)
