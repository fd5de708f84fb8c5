"""An in-process LLM client behind a real ResourceManager, for the durability and
observability tests.

The cache, cost accounting, budgets and call probes live in the
:class:`~plait.resources.ResourceManager`, so those tests need the real manager;
only the network is replaced. :class:`FakeLLM` is a client factory whose
clients answer ``"ECHO: <last message>"`` with token counts derived from the
text, count every request, and can be held at a gate so a test decides when
replies arrive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from plait.clients.base import ChatRequest, ChatResponse, LLMClient
from plait.errors import PermanentError
from plait.resources import EndpointConfig, ResourceConfig, ResourceManager

SECRET = "sk-durability-secret-0123456789"


class FakeLLM:
    """Client factory and shared behaviour of every client it makes."""

    def __init__(self, *, latency: float = 0.0, output_tokens: int = 5) -> None:
        self.latency = latency
        self.output_tokens = output_tokens
        self.requests: list[ChatRequest] = []
        self.fail_prompts: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.in_flight = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    def prompts(self) -> list[str]:
        return [str(request.messages[-1]["content"]) for request in self.requests]

    def __call__(self, endpoint: EndpointConfig) -> LLMClient:
        return _Client(self)


class _Client:
    def __init__(self, owner: FakeLLM) -> None:
        self.owner = owner

    async def complete(self, request: ChatRequest) -> ChatResponse:
        owner = self.owner
        owner.requests.append(request)
        owner.in_flight += 1
        try:
            if owner.latency:
                await asyncio.sleep(owner.latency)
            if owner.gate is not None:
                await owner.gate.wait()
            prompt = str(request.messages[-1]["content"])
            if prompt in owner.fail_prompts:
                raise PermanentError(f"refused {prompt!r}", status_code=400)
            content = f"ECHO: {prompt}"
            parsed = None
            if request.response_format is not None:
                parsed = request.response_format.model_validate({"text": prompt})
                content = parsed.model_dump_json()
            return ChatResponse(
                content=content,
                model=f"{request.model}-0613",
                finish_reason="stop",
                input_tokens=len(prompt) // 4 + 1,
                output_tokens=owner.output_tokens,
                parsed=parsed,
            )
        finally:
            owner.in_flight -= 1

    async def aclose(self) -> None:
        return None


def manager(
    fake: FakeLLM,
    *,
    aliases: tuple[str, ...] = ("fast",),
    **endpoint: Any,
) -> ResourceManager:
    """A ResourceManager whose every alias reaches a ``fake`` client."""
    settings = {"model": "fake-model", "api_key": SECRET, "max_concurrent": 8, **endpoint}
    return ResourceManager(
        ResourceConfig({alias: dict(settings) for alias in aliases}), client_factory=fake
    )
