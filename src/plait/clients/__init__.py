"""OpenAI-compatible LLM clients behind one small protocol.

:class:`LeanClient` is the default (plait's own HTTP/1.1 pool on asyncio
streams, lowest CPU per request); :class:`OpenAIClient` runs on the official
SDK for endpoints that need it. Both raise the same plait errors for the same
failures. The client classes are imported on first use, so ``import plait``
(and tracing, which never sends a request) pays for neither; the SDK and its
HTTP stack take most of a second to import.
"""

from typing import TYPE_CHECKING, Any

from plait.clients.base import (
    ChatRequest,
    ChatResponse,
    LLMClient,
    RawToolCall,
    StreamingClient,
)

if TYPE_CHECKING:
    from plait.clients.lean import LeanClient
    from plait.clients.openai_sdk import OpenAIClient

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "LLMClient",
    "LeanClient",
    "OpenAIClient",
    "RawToolCall",
    "StreamingClient",
]


def __getattr__(name: str) -> Any:
    if name == "LeanClient":
        from plait.clients.lean import LeanClient

        return LeanClient
    if name == "OpenAIClient":
        from plait.clients.openai_sdk import OpenAIClient

        return OpenAIClient
    raise AttributeError(f"module 'plait.clients' has no attribute {name!r}")
