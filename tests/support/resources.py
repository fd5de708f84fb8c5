"""The conventions plait's engine tests script :class:`FakeResources` with.

Most of these tests choose a reply by alias and prompt text, and a delay by
prompt; these adapters turn such tables into the request handlers and latency
functions the shipped fake takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from plait.clients.base import ChatRequest
from plait.testing import FakeResources, Handler, Reply, prompt_of


def replying(reply: Callable[[str, str], Reply]) -> Handler:
    """A handler from ``reply(alias, prompt)`` (the fake names the alias in ``request.model``)."""
    return lambda request: reply(request.model, prompt_of(request))


def by_prompt(delays: Mapping[str, float], default: float = 0.0) -> Callable[[ChatRequest], float]:
    """Latency per prompt text, ``default`` for every other prompt."""
    return lambda request: delays.get(prompt_of(request), default)


async def hang(request: ChatRequest) -> Reply:
    """A scripted step that never answers: the call waits until it is cancelled."""
    return await asyncio.get_running_loop().create_future()


def echo_resources(structured: Mapping[str, Any] | None = None) -> FakeResources:
    """Any alias answers ``"[alias] <prompt>"``, so an output shows which calls ran
    with what text; a structured call gets its model built from ``structured``."""
    fields = dict(structured or {})

    def reply(request: ChatRequest) -> Reply:
        if request.response_format is not None:
            return request.response_format.model_validate(fields)
        return f"[{request.model}] {prompt_of(request)}"

    return FakeResources(reply)
