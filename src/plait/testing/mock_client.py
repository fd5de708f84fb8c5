"""An LLM client that answers from a function, for testing the real resource manager.

Concurrency limits, rate limits, pools, failover, retries' accounting, usage,
cost, budgets and the response cache all live in the
:class:`~plait.resources.ResourceManager`, so testing them needs the real
manager; only the network has to go. :class:`MockClient` plays the part of an
endpoint's HTTP client, the way httpx's ``MockTransport`` plays a transport:
each request goes to a handler that answers it or raises.
"""

from __future__ import annotations

from plait.clients.base import ChatRequest, ChatResponse, LLMClient
from plait.resources.config import EndpointConfig
from plait.testing._scripted import Handler, Latency, answer, prompt_of, wait_latency


class MockClient:
    """An :class:`~plait.clients.base.LLMClient` whose replies come from ``handler``.

    ``handler(request)``, plain or ``async``, returns text, a pydantic model,
    a :class:`ChatResponse`, or an exception instance, or raises one; a raised
    or returned exception reaches the manager as the endpoint's error, so
    ``RateLimitError``, ``TransientError`` and ``PermanentError`` exercise its
    backpressure, failover and usage counting. Text for a request with a
    ``response_format`` is validated into the model as the HTTP clients do.
    The manager sets ``request.model`` to the endpoint's model before the
    call, so one handler can answer each endpoint of a pool differently.
    Text replies report no token usage; return a :class:`ChatResponse` with
    token counts to test budgets and cost. ``latency`` (seconds, or a function
    of the request) is waited before the handler runs.

    Pass :meth:`factory` as the manager's ``client_factory``; every endpoint
    and event loop then gets this one client, so its counters see every call.

    Example: the manager holds ten calls to two at a time and books the
    tokens each reply reports::

        def handler(request: ChatRequest) -> ChatResponse:
            return ChatResponse("ok", request.model, input_tokens=7, output_tokens=3)

        client = MockClient(handler, latency=0.01)
        manager = ResourceManager(
            {"fast": {"model": "m", "max_concurrent": 2}}, client_factory=client.factory
        )
        hello = [{"role": "user", "content": "hello"}]
        await asyncio.gather(*(manager.complete("fast", ChatRequest(hello)) for _ in range(10)))
        assert client.peak == 2
        assert manager.usage()["fast"].input_tokens == 70
    """

    def __init__(self, handler: Handler, *, latency: Latency = 0.0) -> None:
        self.handler = handler
        self.latency = latency
        self.requests: list[ChatRequest] = []
        self.endpoints: list[EndpointConfig] = []
        self.in_flight = 0
        self.peak = 0
        self.closed = 0

    def factory(self, endpoint: EndpointConfig) -> LLMClient:
        """A ``client_factory`` for :class:`~plait.resources.ResourceManager`.

        Records the endpoint each client was made for in ``endpoints``: the
        manager makes one per endpoint per event loop, on that endpoint's
        first call.
        """
        self.endpoints.append(endpoint)
        return self

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await wait_latency(self.latency, request)
            return await answer(self.handler, request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        """Count the close: the manager closes each loop's clients in ``aclose``."""
        self.closed += 1

    def prompts(self) -> list[str]:
        """The prompt (last message) of every request, in the order they came."""
        return [prompt_of(request) for request in self.requests]
