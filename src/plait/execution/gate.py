"""Depth-first admission to an alias's endpoints: earlier inputs' calls go first.

The scheduler runs more workers than an endpoint has slots, so calls queue
at the endpoint's own FIFO in the order workers reached it. First stages of
hundreds of inputs then sit ahead of the second stage of the very first
input, and a batch's first result waits for almost every first stage. A
gate per alias, sized to the pool's concurrency, lets through at most that
many calls at once and hands each freed slot to the waiting call whose input
was admitted earliest, so inputs finish roughly in admission order: results
stream early and a killed run has paid for few half-done inputs. At the end
of a batch the scheduler swaps the order (:meth:`Gate.swap_order`) so that the
last inputs' branches go before their joins and fill the last waves.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Coroutine
from itertools import count
from typing import Any, TypeVar

T = TypeVar("T")

Key = tuple[int, int, int]
"""-priority, then input index and the node's rank in its graph (see GraphPlan), in the
order the scheduler uses at that point of the run (:meth:`Gate.swap_order`): smaller goes first."""


class Gate:
    """``limit`` slots; a freed slot goes to the smallest waiting key."""

    __slots__ = ("_order", "_waiters", "free")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiters: list[tuple[Key, int, asyncio.Future[None]]] = []
        self._order = count()

    async def acquire(self, key: Key) -> None:
        if self.free > 0:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (key, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted in the tick it was cancelled: pass the slot on.
                self.release()
            raise

    def swap_order(self) -> None:
        """Rank waiting calls by node rank before input index, as the scheduler now does."""
        waiters = self._waiters
        waiters[:] = [((key[0], key[2], key[1]), order, future) for key, order, future in waiters]
        heapq.heapify(waiters)

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)
                return
        self.free += 1


def gates_for(resources: Any) -> dict[str, Gate]:
    """One gate per alias of a real resource manager, sized to its endpoints' slots.

    Test doubles and null clients have no configured concurrency and get none:
    their calls go straight through, as before.
    """
    config = getattr(resources, "config", None)
    aliases = getattr(resources, "aliases", None)
    if config is None or not isinstance(aliases, tuple):
        return {}
    return {alias: Gate(sum(e.max_concurrent for e in config[alias])) for alias in aliases}


async def gated(gate: Gate, key: Key, call: Awaitable[T]) -> T:
    """``call`` once ``gate`` lets it through; the slot is freed when it ends."""
    try:
        await gate.acquire(key)
    except BaseException:
        if isinstance(call, Coroutine):
            call.close()
        raise
    try:
        return await call
    finally:
        gate.release()
