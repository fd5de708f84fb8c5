"""Sending one call as a token stream, for the resource manager.

Kept apart from the manager's hot path: only a streamed call comes here. The
manager still holds the endpoint's slot and rate permit around the whole
await, so a stream keeps them until its last chunk, exactly as a whole reply
keeps them until its body is read.
"""

from __future__ import annotations

import time

from plait.clients.base import ChatRequest, ChatResponse, LLMClient, StreamingClient
from plait.clients.sse import DeltaSink


class FirstToken:
    """Forwards deltas to ``sink`` and notes when the first one arrived (``perf_counter``)."""

    __slots__ = ("at", "sink")

    def __init__(self, sink: DeltaSink) -> None:
        self.sink = sink
        self.at = 0.0

    def __call__(self, text: str) -> None:
        if not self.at:
            self.at = time.perf_counter()
        self.sink(text)


async def stream_call(client: LLMClient, request: ChatRequest, first: FirstToken) -> ChatResponse:
    """The reply to ``request``, its text passed to ``first`` as it streams in.

    A client that cannot stream (a test double, a custom backend) answers
    whole, and its text goes out as a single delta when the reply is in.
    """
    if isinstance(client, StreamingClient):
        return await client.stream(request, first)
    response = await client.complete(request)
    if response.content:
        first(response.content)
    return response
