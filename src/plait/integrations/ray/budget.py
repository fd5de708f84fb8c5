"""A rate budget shared across processes, held by one Ray actor.

Each worker asks the actor for a permit before it sends a request. The actor
runs the token buckets and answers with the wall-clock time of the caller's
reserved slot; the caller sleeps locally until then. Reserving rather than polling keeps
it to one actor call per request and keeps the actor's own work trivial.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import ray

from plait.clients.base import ChatRequest, ChatResponse
from plait.resources.protocol import ResourceManagerLike
from plait.resources.tokens import message_tokens


class RateBudget:
    """Per-alias request and token buckets; every method is called through Ray.

    ``limits`` maps alias -> ``{"rate_limit": rpm, "token_rate_limit": tpm}``
    (either may be missing). Buckets hold at most one request's worth, so the
    shared rate is paced evenly rather than spent in bursts.
    """

    def __init__(self, limits: Mapping[str, Mapping[str, float | None]]) -> None:
        self._requests: dict[str, tuple[float, float]] = {}
        self._tokens: dict[str, tuple[float, float]] = {}
        for alias, limit in limits.items():
            rpm = limit.get("rate_limit")
            tpm = limit.get("token_rate_limit")
            if rpm:
                self._requests[alias] = (rpm / 60.0, 0.0)
            if tpm:
                self._tokens[alias] = (tpm / 60.0, 0.0)
        self.granted: dict[str, int] = {}
        self._span: dict[str, tuple[float, float]] = {}

    def reserve(self, alias: str, tokens: int) -> float:
        """Reserve one request and ``tokens`` tokens; returns when (``time.time()``) to send.

        An absolute time rather than a delay, so the latency of the reply from
        this actor does not shift the caller's send time.
        """
        now = time.time()
        start = now
        if alias in self._requests:
            rate, next_free = self._requests[alias]
            start = max(start, next_free)
        if alias in self._tokens and tokens:
            rate_t, next_free_t = self._tokens[alias]
            start = max(start, next_free_t)
            self._tokens[alias] = (rate_t, start + tokens / rate_t)
        if alias in self._requests:
            rate, _ = self._requests[alias]
            self._requests[alias] = (rate, start + 1.0 / rate)
        self.granted[alias] = self.granted.get(alias, 0) + 1
        first, _ = self._span.get(alias, (start, start))
        self._span[alias] = (first, start)
        return start

    def stats(self) -> dict[str, dict[str, float]]:
        """Per alias: permits granted, and the first and last send times handed out."""
        return {
            alias: {"granted": count, "first": self._span[alias][0], "last": self._span[alias][1]}
            for alias, count in self.granted.items()
        }


def create_budget(limits: Mapping[str, Mapping[str, float | None]], name: str | None = None) -> Any:
    """Start the budget actor; pass the handle to every ``PlaitMapper``."""
    actor = ray.remote(num_cpus=0)(RateBudget)
    options = {"name": name} if name else {}
    return actor.options(**options).remote(dict(limits))


class SharedBudgetResources:
    """A resource manager that asks the shared budget before each request.

    The wrapped manager keeps doing everything else (pools, per-endpoint
    concurrency, retries' error mapping, usage); it should not also apply the
    rate limits the budget enforces, or each worker would pace itself twice.
    """

    def __init__(self, inner: ResourceManagerLike, budget: Any) -> None:
        self.inner = inner
        self.budget = budget

    async def complete(self, alias: str, request: ChatRequest, *, attempt: int = 0) -> ChatResponse:
        tokens = message_tokens(request.messages)
        send_at: float = await self.budget.reserve.remote(alias, tokens + (request.max_tokens or 0))
        wait = send_at - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        return await self.inner.complete(alias, request, attempt=attempt)

    def check_aliases(self, aliases: Iterable[str]) -> None:
        self.inner.check_aliases(aliases)

    def retry_limit(self, alias: str) -> int | None:
        return self.inner.retry_limit(alias)

    def usage(self) -> Any:
        return getattr(self.inner, "usage", dict)()

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()
