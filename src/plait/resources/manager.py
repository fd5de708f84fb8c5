"""The one gate every LLM call goes through.

For each call the manager picks an endpoint from the alias's pool, holds a
slot of that endpoint's concurrency limit, waits for its rate limiter, calls
its client and books the outcome (usage, pool health, limiter backpressure).
Errors are re-raised unchanged: deciding to retry or requeue is the
scheduler's job, and it decides by error class.

Configuration-level state (usage, pool health, rate limiters) is shared by
every event loop, so limits and counters hold across successive ``run_sync``
calls. Clients and concurrency slots are bound to an event loop, so they are
kept per loop (``endpoint.LoopState``), created on first use there, and
dropped once their loop closes.

``complete`` runs once per LLM call at thousands of calls per second, so it
avoids logging, pydantic, copies and coroutine calls on its uncontended path.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from plait.clients.base import ChatRequest, ChatResponse, LLMClient
from plait.clients.sse import DeltaSink
from plait.errors import (
    BudgetExceededError,
    QuotaExceededError,
    RateLimitError,
    ResourcesInUseError,
    TaskTimeoutError,
    TransientError,
    UnknownAliasError,
)
from plait.profiling.observer import CallProbe
from plait.resources.config import ResourceConfig
from plait.resources.dialects import Send, send_structured
from plait.resources.endpoint import ClientFactory, Endpoint, LoopState, default_client_factory
from plait.resources.pool import EndpointPool, PoolMember
from plait.resources.queueing import HAND_BACK_AFTER, hold
from plait.resources.rate_limit import RateLimiter
from plait.resources.streaming import FirstToken, stream_call
from plait.resources.tokens import estimate_tokens
from plait.resources.usage import AliasUsage

if TYPE_CHECKING:
    from plait.storage.cache import RunCache

# How long a member whose account is out of quota sits out of its pool.
_QUOTA_COOLDOWN = 300.0


async def _within(reply: Awaitable[ChatResponse], seconds: float, to: Endpoint) -> Any:
    """``reply``, or TaskTimeoutError once it has been on the wire ``seconds``."""
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await reply
    except TimeoutError as error:
        if not scope.expired():
            raise
        raise TaskTimeoutError(
            f"the request to {to.label} got no reply within task_timeout={seconds}s "
            "(counted from when it was sent, not while it queued)"
        ) from error


class _Route:
    """One alias: its pool of endpoints, its usage, and its retry budget."""

    __slots__ = ("pool", "retry_limit", "usage")

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.pool = EndpointPool(endpoints, [e.config.weight for e in endpoints])
        limits = [e.config.max_retries for e in endpoints if e.config.max_retries is not None]
        self.retry_limit = max(limits) if limits else None
        self.usage = AliasUsage()


class ResourceManager:
    """Routes calls by alias to endpoints, within their concurrency and rate limits."""

    def __init__(
        self,
        config: ResourceConfig | Mapping[str, Any],
        *,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.config = config if isinstance(config, ResourceConfig) else ResourceConfig(config)
        self._factory = client_factory or default_client_factory
        self._endpoints: list[Endpoint] = []
        self._routes: dict[str, _Route] = {}
        for alias in self.config:
            members = []
            for index, endpoint_config in enumerate(self.config[alias]):
                label = f"{alias}[{index}] {endpoint_config.model}"
                endpoint = Endpoint(endpoint_config, len(self._endpoints), label)
                self._endpoints.append(endpoint)
                members.append(endpoint)
            route = self._routes[alias] = _Route(members)
            route.pool.on_unhealthy = functools.partial(self._evict, route.pool)
        self._states: dict[asyncio.AbstractEventLoop, LoopState] = {}
        self._state_loop: asyncio.AbstractEventLoop | None = None
        self._state: LoopState | None = None

    # -- checks and introspection ---------------------------------------

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._routes)

    def check_aliases(self, aliases: Iterable[str]) -> None:
        """Fail, before anything is sent, if any alias is not configured."""
        missing = [alias for alias in dict.fromkeys(aliases) if alias not in self._routes]
        if missing:
            raise UnknownAliasError.for_aliases(missing, self._routes)

    def retry_limit(self, alias: str) -> int | None:
        """The alias's ``max_retries`` (largest in a pool), or None to use the scheduler's."""
        return self._route(alias).retry_limit

    @property
    def has_endpoint_caches(self) -> bool:
        """Whether any endpoint names a cache of its own, which a run must number."""
        return any(endpoint.config.cache for endpoint in self._endpoints)

    def priced(self, alias: str) -> bool:
        """Whether every endpoint of ``alias`` has prices, so its calls have a cost."""
        return all(member.item.priced for member in self._route(alias).pool.members)

    def limiter(self, alias: str, index: int = 0) -> RateLimiter:
        """The rate limiter of endpoint ``index`` in the alias's pool."""
        return self._route(alias).pool.members[index].item.limiter

    def usage(self) -> dict[str, AliasUsage]:
        """A snapshot of every alias's usage so far."""
        return {alias: route.usage.copy() for alias, route in self._routes.items()}

    def reset_usage(self) -> None:
        for route in self._routes.values():
            route.usage = AliasUsage()

    def __repr__(self) -> str:
        aliases = ", ".join(
            f"{alias}={[m.item.model for m in route.pool.members]!r}"
            for alias, route in self._routes.items()
        )
        return f"ResourceManager({aliases})"

    # -- calls -----------------------------------------------------------

    async def complete(
        self,
        alias: str,
        request: ChatRequest,
        *,
        attempt: int = 0,
        cache: RunCache | None = None,
        probe: CallProbe | None = None,
        reply_within: float | None = None,
        max_pause: float | None = None,
        on_delta: DeltaSink | None = None,
    ) -> ChatResponse:
        """Send ``request`` to an endpoint of ``alias`` and return its reply.

        ``request.model`` is set to the chosen endpoint's model (the request
        is the resource layer's to fill in; a retry may land elsewhere and is
        set again). ``attempt`` > 0 marks a retry in the usage counters.
        ``cache`` is the run's handle on the response caches: the one its
        ``cache=`` setting names, which an endpoint's own ``cache`` setting
        overrides, each numbering the run's repeated samples; a hit returns
        at once and counts as a cache hit, not a request. ``probe``, when
        given, is filled in with where the call went, how long it waited and
        what it cost; if its ``halt`` is exceeded by the time a slot and a
        rate permit are held, the request is not sent and
        :class:`BudgetExceededError` is raised. ``max_pause`` bounds the
        pause a burst of 429s to this call sets on its endpoint (the run's
        ``max_retry_after``, when below the endpoint's own bound).

        ``reply_within`` (the run's ``task_timeout``) bounds the request from the
        moment it is sent, never its wait for a slot or a rate permit; past
        it the request is cut and :class:`TaskTimeoutError` raised.

        A call queued for an endpoint that turns unhealthy moves to another
        member of the pool; one that would wait more than a few seconds behind
        an endpoint backing off from 429s, with nowhere else to go, is not
        sent and raises :class:`EndpointBackoffError` for the retry policy.

        With ``on_delta`` the reply is streamed: each text delta goes to it as
        it arrives, the slot and rate permit are held until the stream ends,
        and the time to the first delta is booked in ``usage().ttft``. A
        cached reply goes to ``on_delta`` whole. The reply returned (and
        cached) is the whole streamed one.
        """
        route = self._routes.get(alias)
        if route is None:
            raise UnknownAliasError.for_aliases([alias], self._routes)
        loop = asyncio.get_running_loop()
        state = self._state
        if loop is not self._state_loop or state is None:
            state = self._enter(loop)
        usage = route.usage
        if probe is not None:
            probe.started = time.perf_counter()
        pool = route.pool
        member = pool.pick()
        endpoint = member.item
        request.model = endpoint.model
        store = endpoint.cache_for(cache)
        key = ""
        if store is not None:
            key = store.key(request)
            hit = store.get(request, key)
            if hit is not None:
                pool.release(member)
                usage.cache_hits += 1
                if probe is not None:
                    probe.endpoint = endpoint.label
                    probe.model = endpoint.model
                    probe.cache_hit = True
                    probe.sent = probe.done = time.perf_counter()
                if on_delta is not None and hit.content:
                    on_delta(hit.content)
                return hit
        slots = state.slots[endpoint.index]
        limiter = endpoint.limiter
        estimate = estimate_tokens(request) if endpoint.token_limited else 0
        took_slot = held = bool(slots.free)
        if took_slot:
            slots.free -= 1
            held = limiter.try_acquire(estimate)
        if not held:
            # Contended: queue, and move or hand back if the endpoint turns sick.
            first = endpoint
            member, estimate = await hold(
                state, route.pool, route.usage, member, request, probe, took_slot
            )
            endpoint = member.item
            if endpoint is not first:
                store = endpoint.cache_for(cache)
                key = store.key(request) if store is not None else ""
            slots = state.slots[endpoint.index]
            limiter = endpoint.limiter
        try:
            try:
                if probe is not None:
                    probe.endpoint = endpoint.label
                    probe.model = endpoint.model
                    halt = probe.halt
                    if halt is not None and halt.exceeded:
                        raise BudgetExceededError("the run's budget ran out before this call")
                client = state.clients[endpoint.index]
                if client is None:
                    client = await self._new_client(loop, state, endpoint)
                usage.requests += 1
                if attempt:
                    usage.retries += 1
                started = time.perf_counter()
                sent_at = time.monotonic()
                if probe is not None:
                    probe.sent = started
                pool.sent(member)
                limiter.on_sent()
                ttft = None if on_delta is None else FirstToken(on_delta)
                try:
                    send: Send = (
                        client.complete
                        if ttft is None
                        else functools.partial(stream_call, client, first=ttft)
                    )
                    reply = (
                        send(request)
                        if request.response_format is None
                        else send_structured(send, request, endpoint.dialect)
                    )
                    if reply_within is None:
                        response = await reply
                    else:
                        response = await _within(reply, reply_within, endpoint)
                except RateLimitError as exc:
                    usage.failures += 1
                    usage.rate_limited += 1
                    limiter.correct(estimate, 0)
                    limiter.on_rate_limited(exc.retry_after, sent_at, max_pause=max_pause)
                    paused = limiter.paused_for
                    if paused:
                        pool.trip(member, paused)
                    limiter.evict_beyond(HAND_BACK_AFTER)
                    raise
                except (TransientError, TaskTimeoutError):
                    usage.failures += 1
                    pool.record_failure(member)
                    raise
                except QuotaExceededError:
                    usage.failures += 1
                    pool.trip(member, _QUOTA_COOLDOWN)
                    raise
                except Exception:
                    usage.failures += 1
                    raise
                finally:
                    pool.finished(member)
                    if probe is not None:
                        probe.done = time.perf_counter()
                latency = time.perf_counter() - started
                usage.latency.record(latency)
                if ttft is not None:
                    usage.streams += 1
                    if ttft.at:
                        usage.ttft.record(ttft.at - started)
                        if probe is not None:
                            probe.first_token = ttft.at
            finally:
                slots.release()
        finally:
            pool.release(member)
        usage.successes += 1
        used = response.input_tokens + response.output_tokens
        usage.input_tokens += response.input_tokens
        usage.output_tokens += response.output_tokens
        if endpoint.priced:
            cost = (
                response.input_tokens * endpoint.input_price
                + response.output_tokens * endpoint.output_price
            )
            usage.cost += cost
            if probe is not None:
                probe.cost = cost
        if estimate and used:
            limiter.correct(estimate, used)
        limiter.on_success(sent_at)
        pool.record_success(member, latency)
        if store is not None:
            store.put(request, response, key)
        return response

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the clients this event loop opened."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            return
        closer, state.closer = state.closer, None
        if closer is not None:
            await closer.aclose()
        else:
            await self._close_loop(loop)

    # -- internals -------------------------------------------------------

    def _route(self, alias: str) -> _Route:
        route = self._routes.get(alias)
        if route is None:
            raise UnknownAliasError.for_aliases([alias], self._routes)
        return route

    def _enter(self, loop: asyncio.AbstractEventLoop) -> LoopState:
        """Switch the cached loop state, forgetting loops that have closed.

        Concurrency slots and rate limiters are not shared across event loops,
        so two loops sending at once (``run_sync`` from two threads) would each
        get the whole limit. That is refused with a clear error instead.
        """
        for old in [old for old in self._states if old.is_closed()]:
            del self._states[old]
        for other, other_state in self._states.items():
            if other is not loop and other.is_running() and other_state.busy:
                raise ResourcesInUseError(
                    "this ResourceManager is already sending requests from another event "
                    "loop (another thread); its limits hold within one loop at a time. Give "
                    "each thread its own ResourceManager, or run the calls on one loop."
                )
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = LoopState(self._endpoints)
        self._state_loop = loop
        self._state = state
        return state

    def _evict(self, pool: EndpointPool[Endpoint], member: PoolMember[Endpoint]) -> None:
        """``member`` turned unhealthy: send the calls queued for it elsewhere."""
        state = self._state
        if state is None or not pool.has_alternative(member):
            return
        endpoint = member.item
        state.slots[endpoint.index].evict()
        endpoint.limiter.evict_beyond(0.0)

    async def _new_client(
        self, loop: asyncio.AbstractEventLoop, state: LoopState, endpoint: Endpoint
    ) -> LLMClient:
        """Open ``endpoint``'s client for this loop, and see that the loop closes it.

        A run that opened connections implicitly (``asyncio.run(module(...))``
        with a bound config) never calls :meth:`aclose`, so the first client
        of a loop also starts an async generator whose ``finally`` closes the
        loop's clients: ``asyncio.run`` finalises live async generators as it
        shuts the loop down. A generator rather than a task, because a task
        would stay pending (and visible) for as long as the loop runs.
        """
        client = self._factory(endpoint.config)
        state.clients[endpoint.index] = client
        if state.closer is None:
            closer = state.closer = self._close_at_loop_end(loop)
            await anext(closer)
        return client

    async def _close_at_loop_end(self, loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            await self._close_loop(loop)

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        state = self._states.pop(loop, None)
        if loop is self._state_loop:
            self._state_loop = self._state = None
        if state is None:
            return
        clients = [client for client in state.clients if client is not None]
        await asyncio.gather(*(client.aclose() for client in clients))
