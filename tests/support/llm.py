"""An endpoint that answers like the simulator, for tests of the real ResourceManager.

The cache, cost accounting, budgets and call probes live in the manager, so
those tests keep it and replace only its client with a
:class:`~plait.testing.MockClient` driven by :class:`EchoLLM`.
"""

from __future__ import annotations

from typing import Any

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import PermanentError
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import MockClient, prompt_of

SECRET = "sk-durability-secret-0123456789"
OUTPUT_TOKENS = 5
"""Output tokens every reply reports."""


class EchoLLM:
    """Answers ``"ECHO: <prompt>"`` with token counts derived from the text
    (``len // 4 + 1`` in, :data:`OUTPUT_TOKENS` out); a structured call gets
    ``{"text": prompt}``. Prompts in ``fail_prompts`` are refused with a 400."""

    def __init__(self) -> None:
        self.fail_prompts: set[str] = set()

    def __call__(self, request: ChatRequest) -> ChatResponse:
        prompt = prompt_of(request)
        if prompt in self.fail_prompts:
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
            output_tokens=OUTPUT_TOKENS,
            parsed=parsed,
        )


def echo_llm(*, latency: float = 0.0) -> MockClient:
    return MockClient(EchoLLM(), latency=latency)


def manager(
    client: MockClient,
    *,
    aliases: tuple[str, ...] = ("fast",),
    **endpoint: Any,
) -> ResourceManager:
    """A ResourceManager whose every alias reaches ``client``."""
    settings = {"model": "fake-model", "api_key": SECRET, "max_concurrent": 8, **endpoint}
    return ResourceManager(
        ResourceConfig({alias: dict(settings) for alias in aliases}), client_factory=client.factory
    )
