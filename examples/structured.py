"""Structured outputs: a pydantic model as ``response_format``, and field access in forward.

``out.sentiment`` on a structured output records a selection in the graph, so
the next prompt receives just that field. The simulator builds replies that
satisfy the JSON schema plait sends; a real model does the same.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel

from plait import LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class Triage(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    topic: str
    urgent: bool


class SupportDesk(Module):
    def __init__(self) -> None:
        super().__init__()
        self.triage = LLMInference("fast", response_format=Triage, temperature=0)
        self.reply = LLMInference("fast")

    def forward(self, message: str) -> Any:
        triage = self.triage(f"Triage this support message:\n{message}")
        return self.reply(f"Draft a reply about {triage.topic} in a {triage.sentiment} tone.")


def scripted(body: dict[str, Any]) -> str | dict[str, Any]:
    """The simulator's stand-in for a model: a triage object, or a drafted reply."""
    prompt = body["messages"][-1]["content"]
    if body.get("response_format"):
        urgent = "refund" in prompt
        return {
            "sentiment": "negative" if urgent else "neutral",
            "topic": "billing",
            "urgent": urgent,
        }
    return f"Drafted: {prompt}"


async def main() -> None:
    async with Simulator(reply=scripted) as sim:
        resources = ResourceManager(
            ResourceConfig({"fast": {"model": "demo", "base_url": sim.base_url}})
        )
        desk = SupportDesk().bind(resources)
        triage_only = LLMInference("fast", response_format=Triage).bind(resources)
        try:
            ticket = await triage_only("I want a refund now.")
            print(type(ticket).__name__, ticket.model_dump())
            print(await desk("I want a refund now."))
        finally:
            await resources.aclose()


if __name__ == "__main__":
    asyncio.run(main())
