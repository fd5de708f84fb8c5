"""The one gate every LLM call goes through.

For each call the manager picks an endpoint from the alias's pool, holds a
slot of that endpoint's concurrency limit, waits for its rate limiter, calls
its client and books the outcome (usage, pool health, limiter backpressure).
Errors are re-raised unchanged: deciding to retry or requeue is the
scheduler's job, and it decides by error class.

Configuration-level state (usage, pool health, rate limiters) is shared by
every event loop, so limits and counters hold across successive ``run_sync``
calls. Clients and semaphores are bound to an event loop, so they are kept
per loop, created on first use there, and dropped once their loop closes.

``complete`` runs once per LLM call at thousands of calls per second, so it
avoids logging, pydantic, copies and coroutine calls on its uncontended path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from plait.clients.base import ChatRequest, ChatResponse, LLMClient
from plait.errors import (
    BudgetExceededError,
    PlaitError,
    RateLimitError,
    TransientError,
    UnknownAliasError,
)
from plait.profiling.observer import CallProbe
from plait.resources.config import EndpointConfig, ResourceConfig
from plait.resources.pool import EndpointPool
from plait.resources.rate_limit import RateLimiter
from plait.resources.usage import AliasUsage

if TYPE_CHECKING:
    from plait.storage.cache import ResponseCache

ClientFactory = Callable[[EndpointConfig], LLMClient]

# Output tokens assumed for a request without max_tokens, until the reply's
# usage corrects the estimate.
DEFAULT_OUTPUT_TOKENS = 256


def default_client_factory(endpoint: EndpointConfig) -> LLMClient:
    """Build the client class that ``endpoint.client`` names."""
    # Imported here so the resource layer loads without the HTTP stacks.
    client_class: type[LLMClient]
    if endpoint.client == "openai":
        from plait.clients.openai_sdk import OpenAIClient

        client_class = OpenAIClient
    else:
        from plait.clients.lean import LeanClient

        client_class = LeanClient
    api_key = endpoint.api_key.get_secret_value() if endpoint.api_key is not None else None
    return client_class(
        endpoint.base_url,
        api_key,
        timeout=endpoint.timeout,
        headers=dict(endpoint.headers),
        max_connections=endpoint.max_concurrent,
    )


def estimate_tokens(request: ChatRequest) -> int:
    """A cheap upper-ish guess at a call's tokens: 4 characters per input token
    plus the output allowance. The reply's usage settles the difference."""
    chars = 0
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        chars += len(text)
    output = request.max_tokens if request.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    return -(-chars // 4) + output


class _Endpoint:
    """What the hot path needs about one endpoint, flattened out of the config."""

    __slots__ = (
        "_cache",
        "config",
        "inherit_cache",
        "input_price",
        "label",
        "limiter",
        "model",
        "output_price",
        "priced",
        "slot",
        "token_limited",
    )

    def __init__(self, config: EndpointConfig, slot: int, label: str) -> None:
        self.config = config
        self.slot = slot
        self.label = label
        self.model = config.model
        self.token_limited = config.token_rate_limit is not None
        self.limiter = RateLimiter(config.rate_limit, config.token_rate_limit)
        # Prices are per million tokens in the config, per token here.
        self.priced = config.input_price is not None or config.output_price is not None
        self.input_price = (config.input_price or 0.0) / 1e6
        self.output_price = (config.output_price or 0.0) / 1e6
        self.inherit_cache = config.cache is None
        self._cache: ResponseCache | None = None

    def own_cache(self) -> ResponseCache | None:
        """The cache this endpoint's config names (opened on first use), or None."""
        if self._cache is None and self.config.cache:
            from plait.storage.cache import open_cache

            self._cache = open_cache(self.config.cache)
        return self._cache


class _Route:
    __slots__ = ("pool", "retry_budget", "usage")

    def __init__(self, endpoints: list[_Endpoint]) -> None:
        self.pool = EndpointPool(endpoints, [e.config.weight for e in endpoints])
        budgets = [e.config.max_retries for e in endpoints if e.config.max_retries is not None]
        self.retry_budget = max(budgets) if budgets else None
        self.usage = AliasUsage()


class _Slots:
    """An endpoint's concurrency limit: a FIFO counting semaphore.

    Unlike ``asyncio.Semaphore`` the uncontended path is an attribute
    decrement inline in the caller, with no coroutine, which is a measurable
    share of the per-call budget. A released slot passes straight to the
    oldest waiter, so late arrivals cannot overtake it.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Queue for a slot (only when ``free`` is 0); it is handed over by ``release``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(future)
            else:
                # The slot arrived in the same tick as the cancellation.
                self.release()
            raise

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.free += 1


class _LoopState:
    """The loop-bound half: a client (made on first use) and slots per endpoint."""

    __slots__ = ("clients", "limits", "slots")

    def __init__(self, endpoints: list[_Endpoint]) -> None:
        self.clients: list[LLMClient | None] = [None] * len(endpoints)
        self.slots = [_Slots(e.config.max_concurrent) for e in endpoints]
        self.limits = [e.config.max_concurrent for e in endpoints]

    @property
    def busy(self) -> bool:
        """Whether any call on this loop holds or awaits an endpoint slot."""
        return any(
            slots.waiters or slots.free < limit
            for slots, limit in zip(self.slots, self.limits, strict=True)
        )


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
        self._endpoints: list[_Endpoint] = []
        self._routes: dict[str, _Route] = {}
        for alias in self.config:
            members = []
            for index, endpoint_config in enumerate(self.config[alias]):
                label = f"{alias}[{index}] {endpoint_config.model}"
                endpoint = _Endpoint(endpoint_config, len(self._endpoints), label)
                self._endpoints.append(endpoint)
                members.append(endpoint)
            self._routes[alias] = _Route(members)
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._state_loop: asyncio.AbstractEventLoop | None = None
        self._state: _LoopState | None = None

    # -- checks and introspection ---------------------------------------

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._routes)

    def check_aliases(self, aliases: Iterable[str]) -> None:
        """Fail, before anything is sent, if any alias is not configured."""
        missing = [alias for alias in dict.fromkeys(aliases) if alias not in self._routes]
        if missing:
            raise UnknownAliasError.for_aliases(missing, self._routes)

    def retry_budget(self, alias: str) -> int | None:
        """The alias's ``max_retries`` (largest in a pool), or None to use the scheduler's."""
        return self._route(alias).retry_budget

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
        cache: ResponseCache | None = None,
        probe: CallProbe | None = None,
    ) -> ChatResponse:
        """Send ``request`` to an endpoint of ``alias`` and return its reply.

        ``request.model`` is set to the chosen endpoint's model (the request
        is the resource layer's to fill in; a retry may land elsewhere and is
        set again). ``attempt`` > 0 marks a retry in the usage counters.
        ``cache`` is the run's response cache (an endpoint's own ``cache``
        setting overrides it); a hit returns at once and counts as a cache
        hit, not a request. ``probe``, when given, is filled in with where the
        call went, how long it waited and what it cost; if its ``halt`` is
        exceeded by the time a slot and a rate permit are held, the request
        is not sent and :class:`BudgetExceededError` is raised.
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
        store = cache if endpoint.inherit_cache else endpoint.own_cache()
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
                return hit
        usage.requests += 1
        if attempt:
            usage.retries += 1
        try:
            slots = state.slots[endpoint.slot]
            if slots.free:
                slots.free -= 1
            elif probe is None:
                await slots.wait()
            else:
                waited = time.perf_counter()
                await slots.wait()
                probe.slot_wait = time.perf_counter() - waited
            try:
                limiter = endpoint.limiter
                estimate = estimate_tokens(request) if endpoint.token_limited else 0
                if not limiter.try_acquire(estimate):
                    waited = time.perf_counter()
                    await limiter.acquire(estimate)
                    blocked = time.perf_counter() - waited
                    usage.rate_limit_wait += blocked
                    if probe is not None:
                        probe.rate_wait = blocked
                if probe is not None:
                    probe.endpoint = endpoint.label
                    probe.model = endpoint.model
                    halt = probe.halt
                    if halt is not None and halt.exceeded:
                        usage.requests -= 1
                        raise BudgetExceededError("the run's budget ran out before this call")
                client = state.clients[endpoint.slot]
                if client is None:
                    client = self._new_client(state, endpoint)
                started = time.perf_counter()
                sent_at = time.monotonic()
                if probe is not None:
                    probe.sent = started
                try:
                    response = await client.complete(request)
                except RateLimitError as exc:
                    usage.failures += 1
                    usage.rate_limited += 1
                    limiter.correct(estimate, 0)
                    limiter.on_rate_limited(exc.retry_after, sent_at)
                    raise
                except TransientError:
                    usage.failures += 1
                    pool.record_failure(member)
                    raise
                except Exception:
                    usage.failures += 1
                    raise
                finally:
                    if probe is not None:
                        probe.done = time.perf_counter()
                usage.latency.record(time.perf_counter() - started)
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
        pool.record_success(member)
        if store is not None:
            store.put(request, response, key)
        return response

    async def aclose(self) -> None:
        """Close the clients this event loop opened."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if loop is self._state_loop:
            self._state_loop = self._state = None
        if state is None:
            return
        clients = [client for client in state.clients if client is not None]
        await asyncio.gather(*(client.aclose() for client in clients))

    # -- internals -------------------------------------------------------

    def _route(self, alias: str) -> _Route:
        route = self._routes.get(alias)
        if route is None:
            raise UnknownAliasError.for_aliases([alias], self._routes)
        return route

    def _enter(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        """Switch the cached loop state, forgetting loops that have closed.

        Concurrency slots and rate limiters are not shared across event loops,
        so two loops sending at once (``run_sync`` from two threads) would each
        get the whole limit. That is refused with a clear error instead.
        """
        for old in [old for old in self._states if old.is_closed()]:
            del self._states[old]
        for other, other_state in self._states.items():
            if other is not loop and other.is_running() and other_state.busy:
                raise PlaitError(
                    "this ResourceManager is already sending requests from another event "
                    "loop (another thread); its limits hold within one loop at a time. Give "
                    "each thread its own ResourceManager, or run the calls on one loop."
                )
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(self._endpoints)
        self._state_loop = loop
        self._state = state
        return state

    def _new_client(self, state: _LoopState, endpoint: _Endpoint) -> LLMClient:
        client = self._factory(endpoint.config)
        state.clients[endpoint.slot] = client
        return client
