"""What the in-process fakes share: the reply forms a test may script, and how
each becomes what a real endpoint call would have returned or raised.

A reply is text, a pydantic model, a whole :class:`ChatResponse`, or an
exception instance (a fault: it is raised, not returned). A handler computes a
reply from the request and may be a plain or an ``async`` function, so a test
can make a call wait on something of its own before it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from pydantic import BaseModel

from plait.clients.base import ChatRequest, ChatResponse
from plait.clients.structured import validate_reply

Reply: TypeAlias = str | BaseModel | ChatResponse | BaseException
Handler: TypeAlias = Callable[[ChatRequest], Reply | Awaitable[Reply]]
Step: TypeAlias = Reply | Handler
"""One scripted step: a reply as it is, or a handler that computes it."""
Latency: TypeAlias = float | Callable[[ChatRequest], float]

sleep = asyncio.sleep
"""Bound at import, so a test that patches ``asyncio.sleep`` to count the
engine's sleeps does not count a fake's simulated latency too."""


def prompt_of(request: ChatRequest) -> str:
    """The content of a request's last message as text: the part of a call that
    scripted replies are usually chosen by."""
    return str(request.messages[-1]["content"])


def as_response(reply: Reply, request: ChatRequest) -> ChatResponse:
    """The response a client would return for ``reply``, or raise it if it is a fault.

    Text for a request with a ``response_format`` is validated into that model
    by the same parser the HTTP clients use, so a reply that does not fit fails
    with the same :class:`~plait.errors.ResponseValidationError`.
    """
    if isinstance(reply, BaseException):
        raise reply
    if isinstance(reply, ChatResponse):
        return reply
    if isinstance(reply, BaseModel):
        content = reply.model_dump_json()
        return ChatResponse(content, request.model, finish_reason="stop", parsed=reply)
    parsed = None
    if request.response_format is not None:
        parsed = validate_reply(reply, request.response_format)
    return ChatResponse(reply, request.model, finish_reason="stop", parsed=parsed)


async def answer(step: Step, request: ChatRequest) -> ChatResponse:
    """Play one step: run it if it is a handler (awaiting it if it is async),
    then turn the reply into a response or raise it."""
    reply = step(request) if callable(step) else step
    if isinstance(reply, Awaitable):
        reply = await reply
    return as_response(reply, request)


async def wait_latency(latency: Latency, request: ChatRequest) -> None:
    delay = latency(request) if callable(latency) else latency
    if delay:
        await sleep(delay)
