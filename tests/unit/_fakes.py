"""An in-process resource manager for the object-model and tracing tests.

:class:`EchoResources` answers every chat request with ``"[alias] <last message>"``,
so a test can read from an output which calls ran and what text each received.
For a request with a ``response_format`` it builds the model from the
``structured`` mapping given at construction. Every request is kept, which lets
tests assert on the exact prompt a call sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import UnknownAliasError


class EchoResources:
    """Satisfies the engine's ``ResourceManagerLike`` protocol without any network."""

    def __init__(
        self,
        aliases: Iterable[str] | None = None,
        structured: Mapping[str, Any] | None = None,
    ) -> None:
        self.aliases = None if aliases is None else set(aliases)
        self.structured = dict(structured or {})
        self.requests: list[tuple[str, ChatRequest]] = []

    async def complete(self, alias: str, request: ChatRequest, *, attempt: int = 0) -> ChatResponse:
        self.requests.append((alias, request))
        if request.response_format is not None:
            parsed = request.response_format.model_validate(self.structured)
            return ChatResponse(content=parsed.model_dump_json(), model="echo", parsed=parsed)
        last = request.messages[-1]["content"]
        return ChatResponse(content=f"[{alias}] {last}", model="echo")

    def check_aliases(self, aliases: Iterable[str]) -> None:
        if self.aliases is None:
            return
        unknown = sorted(set(aliases) - self.aliases)
        if unknown:
            raise UnknownAliasError(f"unknown aliases {unknown}")

    def retry_budget(self, alias: str) -> int | None:
        return None

    def prompts(self, alias: str | None = None) -> list[str]:
        """The user message of every request (optionally of one alias), in call order."""
        return [
            request.messages[-1]["content"]
            for name, request in self.requests
            if alias is None or name == alias
        ]

    def systems(self, alias: str | None = None) -> list[str | None]:
        """The system message of every request (None when it had none)."""
        found: list[str | None] = []
        for name, request in self.requests:
            if alias is None or name == alias:
                first = request.messages[0]
                found.append(first["content"] if first["role"] == "system" else None)
        return found
