"""The order a batch's calls reach the server, over real HTTP to the simulator.

Each call waits a few milliseconds at the server, so calls let through by the
endpoint's gate at different slot releases arrive in the order the gate chose.
"""

from __future__ import annotations

import asyncio
from typing import Any

from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator
from support.modules import FanOut

GUARD = 30.0


async def test_inputs_go_depth_first_until_the_last_ones_whose_branches_precede_their_joins() -> (
    None
):
    seen: list[str] = []

    def reply(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        seen.append(prompt)
        return prompt.upper()

    async with Simulator(latency=0.005, reply=reply) as server:
        endpoint = {"model": "sim", "base_url": server.base_url, "max_concurrent": 2}
        resources = ResourceManager(ResourceConfig({"fast": endpoint}))
        try:
            module = FanOut(3).bind(resources=resources)
            outputs = await asyncio.wait_for(module.batch(list("abcde")), GUARD)
        finally:
            await resources.aclose()
        assert server.stats().peak_concurrency == 2
    assert outputs == [" | ".join(f"B{branch}:{x}" for branch in range(3)).upper() for x in "abcde"]

    def join(x: str) -> int:
        return seen.index(" | ".join(f"B{branch}:{x.upper()}" for branch in range(3)))

    def branches(x: str) -> list[int]:
        return [seen.index(f"b{branch}:{x}") for branch in range(3)]

    # While more inputs are unfinished than the endpoint has slots, an
    # earlier input's join goes before a later input's branches, so the
    # first result does not wait for the whole batch's first stage.
    assert join("a") < min(branches("d"))
    # The two left at the end (as many as the slots) run every branch before
    # either join, so their joins share the last wave.
    assert max(branches("d") + branches("e")) < min(join("d"), join("e"))
