"""A self-refine loop on the simulator, for the tests of feedback through a dynamic forward."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from plait import LLMInference, Module, Parameter
from plait.backward_prompt import HEADER
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator

_ITEMS = re.compile(r'<FEEDBACK item="([^"]+)">\.\.\.</FEEDBACK>')


def feedback_reply(feedback: Callable[[str, str], str]) -> Callable[[dict[str, Any]], str]:
    """What the simulator answers: a backward prompt gets ``feedback(prompt, item)``
    for each item it asks about, the judge passes a draft once it has been fixed
    twice, and anything else is echoed."""

    def reply(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        if prompt.startswith(HEADER):
            return "".join(
                f'<FEEDBACK item="{item}">{feedback(prompt, item)}</FEEDBACK>'
                for item in _ITEMS.findall(prompt)
            )
        if prompt.startswith("Judge:"):
            return "PASS" if prompt.count("Fix") >= 2 else "FAIL too vague"
        return "ECHO " + prompt

    return reply


@asynccontextmanager
async def refine_resources(
    reply: Callable[[dict[str, Any]], str],
) -> AsyncIterator[ResourceManager]:
    """A manager whose ``fast``, ``judge`` and ``optimizer`` aliases reach one simulator."""
    async with Simulator(latency=0.01, reply=reply) as sim:
        endpoint = {"model": "sim", "base_url": sim.base_url, "max_concurrent": 8}
        manager = ResourceManager(
            ResourceConfig({"fast": endpoint, "judge": endpoint, "optimizer": endpoint})
        )
        try:
            yield manager
        finally:
            await manager.aclose()


class Refine(Module):
    """Write, then ask a judge and fix the draft until it passes (at most four rounds)."""

    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("Write plainly.", description="how drafts are written")
        self.write = LLMInference("fast", system_prompt=self.style)
        self.judge = LLMInference("judge")

    async def forward(self, task: str) -> str:
        draft = await self.write(task)
        for _ in range(4):
            verdict = await self.judge(f"Judge: {draft}")
            if verdict == "PASS":
                break
            draft = await self.write(f"Fix ({verdict}): {draft}")
        return draft


def never_good(output: Any, target: Any) -> str:
    return "too long"
