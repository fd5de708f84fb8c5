"""One configured endpoint, split by lifetime.

:class:`Endpoint` is what outlives event loops: the config flattened into the
fields the hot path reads, the rate limiter (limits hold across successive
``run_sync`` calls) and the endpoint's own response cache. :class:`LoopState`
is what is bound to one event loop: every endpoint's client (its connection
pool) and concurrency slots, made for that loop and dropped with it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

from plait.clients.base import LLMClient
from plait.resources.config import EndpointConfig
from plait.resources.dialects import DialectChoice
from plait.resources.rate_limit import RateLimiter
from plait.resources.slots import Slots

if TYPE_CHECKING:
    from plait.storage.cache import ResponseCache, RunCache

ClientFactory = Callable[[EndpointConfig], LLMClient]

# The longest an endpoint stops every caller after a burst of 429s. Longer
# waits a server asks for are the refused calls' own, under the run's
# max_retry_after; the endpoint only needs to stop flooding, which the pause
# does at once and the rate cut keeps up.
MAX_ENDPOINT_PAUSE = 5.0


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
        max_response_bytes=endpoint.max_response_bytes,
    )


class Endpoint:
    """What the hot path needs about one endpoint, flattened out of the config.

    ``index`` is the endpoint's place in every :class:`LoopState`'s lists.
    """

    __slots__ = (
        "_cache",
        "config",
        "dialect",
        "index",
        "inherit_cache",
        "input_price",
        "label",
        "limiter",
        "model",
        "output_price",
        "priced",
        "token_limited",
    )

    def __init__(self, config: EndpointConfig, index: int, label: str) -> None:
        self.config = config
        self.index = index
        self.label = label
        self.model = config.model
        self.dialect = DialectChoice(config, label)
        self.token_limited = config.token_rate_limit is not None
        self.limiter = RateLimiter(
            config.rate_limit, config.token_rate_limit, max_backoff=MAX_ENDPOINT_PAUSE
        )
        # Prices are per million tokens in the config, per token here.
        self.priced = config.input_price is not None or config.output_price is not None
        self.input_price = (config.input_price or 0.0) / 1e6
        self.output_price = (config.output_price or 0.0) / 1e6
        self.inherit_cache = config.cache is None
        self._cache: ResponseCache | None = None

    def cache_for(self, run: RunCache | None) -> ResponseCache | None:
        """The cache a call to this endpoint uses, as seen by ``run``.

        The run's own cache unless the config names another (or ``False``,
        none). Inside a run the handle is the run's, which numbers repeated
        samples; a call made outside any run (``run`` None) reads and writes
        an endpoint's cache through its shared, unnumbered handle.
        """
        if self.inherit_cache:
            return None if run is None else run.default
        own = self.own_cache()
        return own if own is None or run is None else run.handle(own)

    def own_cache(self) -> ResponseCache | None:
        """The cache this endpoint's config names (opened on first use), or None."""
        if (self._cache is None or self._cache.closed) and self.config.cache:
            from plait.storage.cache import open_cache

            self._cache = open_cache(self.config.cache)
        return self._cache


class LoopState:
    """The loop-bound half: a client (made on first use) and slots per endpoint.

    ``closer`` is a started async generator whose ``finally`` closes the
    clients; the loop finalises it when it shuts down (see the manager).
    """

    __slots__ = ("clients", "closer", "limits", "slots")

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.clients: list[LLMClient | None] = [None] * len(endpoints)
        self.closer: AsyncGenerator[None, None] | None = None
        self.slots = [Slots(e.config.max_concurrent) for e in endpoints]
        self.limits = [e.config.max_concurrent for e in endpoints]

    @property
    def busy(self) -> bool:
        """Whether any call on this loop holds or awaits an endpoint slot."""
        return any(
            slots.waiters or slots.free < limit
            for slots, limit in zip(self.slots, self.limits, strict=True)
        )
