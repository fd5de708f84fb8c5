"""OpenAI-compatible LLM clients behind one small protocol.

:class:`LeanClient` is the default (a bare aiohttp session, lowest CPU per
request); :class:`OpenAIClient` runs on the official SDK for endpoints that
need it. Both raise the same plait errors for the same failures.
"""

from plait.clients.base import ChatRequest, ChatResponse, LLMClient
from plait.clients.lean import LeanClient
from plait.clients.openai_sdk import OpenAIClient

__all__ = ["ChatRequest", "ChatResponse", "LLMClient", "LeanClient", "OpenAIClient"]
