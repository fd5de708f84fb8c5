"""How the scheduler sends one LLM node's request, kept out of its queue logic.

The scheduler decides when a node runs; these pieces decide what its call
awaits: the resource manager with the run's hooks (cache, budget probe,
wire timeout, burst-pause cap, token stream) and the two timeout wrappers,
one naming the node a wire timeout cut and one bounding a call as a whole
for resources that cannot time the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, cast

from plait.clients.base import ChatRequest, ChatResponse
from plait.clients.sse import DeltaSink
from plait.errors import TaskTimeoutError
from plait.execution.hooks import RunHooks
from plait.profiling.observer import CallProbe, NodeRun
from plait.resources.manager import ResourceManager
from plait.resources.protocol import ResourceManagerLike


def call_observed(
    resources: ResourceManagerLike,
    hooks: RunHooks,
    reply_within: float | None,
    alias: str,
    request: ChatRequest,
    attempt: int,
    record: NodeRun,
    on_delta: DeltaSink | None,
) -> Awaitable[ChatResponse]:
    """The call of an observed run, its cost probe left on ``record``."""
    record.request = request
    if not hooks.probes:  # a test double: on_delta is None, nothing streams
        return resources.complete(alias, request, attempt=attempt)
    probe = record.probe = CallProbe(hooks.budget)
    manager = cast("ResourceManager", resources)
    return manager.complete(
        alias,
        request,
        attempt=attempt,
        cache=hooks.cache,
        probe=probe,
        reply_within=reply_within,
        max_pause=hooks.max_pause,
        on_delta=on_delta,
    )


async def named(node_id: str, call: Awaitable[ChatResponse]) -> ChatResponse:
    """``call``, whose wire timeout (the manager's) is told which node it cut."""
    try:
        return await call
    except TaskTimeoutError as error:
        raise TaskTimeoutError(f"node {node_id!r}: {error}") from error


async def bounded(node_id: str, awaitable: Awaitable[Any], seconds: float | None) -> Any:
    """``awaitable`` cut at ``seconds`` as a whole (a plain step, a test double)."""
    if seconds is None:
        return await awaitable
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError as error:
        raise TaskTimeoutError(
            f"node {node_id!r} took longer than task_timeout={seconds}s"
        ) from error
