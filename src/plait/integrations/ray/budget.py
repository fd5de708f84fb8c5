"""A rate and concurrency budget shared across processes, held by one Ray actor.

Each worker asks the actor for a permit before it sends a request. The actor
runs the token buckets and answers with the wall-clock time of the caller's
reserved slot; the caller sleeps locally until then. Reserving rather than
polling keeps it to one actor call per request and the actor's own work
trivial. An alias with a ``max_concurrent`` also holds one of that many
places across the cluster from the reservation until the reply (one more
actor call, to give it back), because each worker's own ``ResourceManager``
limits only that worker: three workers on an endpoint configured for 4 send
12 at once.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import ray

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import ConfigError
from plait.resources.protocol import ResourceManagerLike
from plait.resources.tokens import prompt_tokens

LIMIT_KEYS = ("rate_limit", "token_rate_limit", "max_concurrent")
"""What a budget can hold per alias: requests/min, tokens/min, requests at once."""


def check_limits(limits: Mapping[str, Mapping[str, float | None]]) -> None:
    """Refuse keys the budget does not enforce, and values that are not positive.

    A misspelt key ignored in silence is a limit the user believes in and the
    cluster exceeds, so it is an error, with the key it probably meant.
    """
    problems = []
    for alias, limit in limits.items():
        if not isinstance(limit, Mapping):
            problems.append(f"{alias}: expected a mapping of limits, got {type(limit).__name__}")
            continue
        for key, value in limit.items():
            if key not in LIMIT_KEYS:
                close = difflib.get_close_matches(str(key), LIMIT_KEYS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(LIMIT_KEYS)
                problems.append(f"{alias}: unknown budget key {key!r}{hint}; known keys: {known}")
            elif value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                problems.append(f"{alias}.{key}: must be a positive number or None, got {value!r}")
            elif key == "max_concurrent" and value is not None and value != int(value):
                problems.append(f"{alias}.max_concurrent: must be a whole number, got {value!r}")
    if problems:
        raise ConfigError("invalid budget:\n" + "\n".join("  " + line for line in problems))


class RateBudget:
    """Per-alias request and token buckets and concurrency places, called through Ray.

    ``limits`` maps alias -> ``{"rate_limit": rpm, "token_rate_limit": tpm,
    "max_concurrent": n}`` (any may be missing). Buckets hold at most one
    request's worth, so the shared rate is paced evenly rather than spent in
    bursts. The actor is async (``reserve`` may wait for a place), so its
    futures belong to the actor's own event loop.
    """

    def __init__(self, limits: Mapping[str, Mapping[str, float | None]]) -> None:
        check_limits(limits)
        self._requests: dict[str, tuple[float, float]] = {}
        self._tokens: dict[str, tuple[float, float]] = {}
        self._places: dict[str, int] = {}
        self._queued: dict[str, deque[asyncio.Future[None]]] = {}
        for alias, limit in limits.items():
            rpm = limit.get("rate_limit")
            tpm = limit.get("token_rate_limit")
            places = limit.get("max_concurrent")
            if rpm:
                self._requests[alias] = (rpm / 60.0, 0.0)
            if tpm:
                self._tokens[alias] = (tpm / 60.0, 0.0)
            if places:
                self._places[alias] = int(places)
                self._queued[alias] = deque()
        self.granted: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._span: dict[str, tuple[float, float]] = {}

    async def reserve(self, alias: str, tokens: int) -> tuple[float, bool]:
        """Reserve one request and ``tokens`` tokens: when (``time.time()``) to send.

        An absolute time rather than a delay, so the latency of the reply from
        this actor does not shift the caller's send time. The flag says a
        concurrency place is held for the caller, to give back with
        :meth:`release` once the reply is in.
        """
        limited = alias in self._places
        if limited:
            await self._take_place(alias)
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
        return start, limited

    def release(self, alias: str) -> None:
        """A caller's request is over: its place goes to the oldest waiter, or back."""
        queued = self._queued[alias]
        while queued:
            future = queued.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._held[alias] -= 1

    def stats(self) -> dict[str, dict[str, float]]:
        """Per alias: permits granted, first and last send times, peak places held."""
        return {
            alias: {
                "granted": count,
                "first": self._span[alias][0],
                "last": self._span[alias][1],
                "peak_concurrency": self._peak.get(alias, 0),
            }
            for alias, count in self.granted.items()
        }

    async def _take_place(self, alias: str) -> None:
        held = self._held.get(alias, 0)
        if held < self._places[alias]:
            held += 1
            self._held[alias] = held
        else:
            # ``release`` hands its place straight to this future.
            future = asyncio.get_running_loop().create_future()
            self._queued[alias].append(future)
            await future
            held = self._held[alias]
        self._peak[alias] = max(self._peak.get(alias, 0), held)


def create_budget(limits: Mapping[str, Mapping[str, float | None]], name: str | None = None) -> Any:
    """Start the budget actor; pass the handle to every ``PlaitMapper``.

    Checked here, before the actor starts, so a bad key fails in the driver
    with a :class:`ConfigError` rather than as an actor that died.
    """
    check_limits(limits)
    actor = ray.remote(num_cpus=0)(RateBudget)
    options = {"name": name} if name else {}
    return actor.options(**options).remote({alias: dict(limit) for alias, limit in limits.items()})


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
        tokens = prompt_tokens(request.messages, request.tools)
        send_at, held = await self.budget.reserve.remote(alias, tokens + (request.max_tokens or 0))
        try:
            wait = send_at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            return await self.inner.complete(alias, request, attempt=attempt)
        finally:
            if held:
                self.budget.release.remote(alias)

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
