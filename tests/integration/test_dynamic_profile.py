"""The Chrome trace of a dynamic run draws each call under the forward that made it.

Read from the JSON a profiled run over real HTTP writes: calls in the
scheduler's process nest inside their forward's slice on its lane, the rest
(LLM calls, in their endpoint's process) are tied to it by flow events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference, Module
from plait.profiling.chrome_trace import trace_events
from plait.profiling.timing import NodeTiming
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class Leaf(Module):
    """Dynamic, two calls in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    async def forward(self, text: str) -> str:
        first = await self.llm(f"one {text}")
        return await self.llm(f"two {first}")


class Middle(Module):
    """Dynamic: two leaves at once, so only one of them fits on its lane."""

    def __init__(self) -> None:
        super().__init__()
        self.leaf = Leaf()

    async def forward(self, text: str) -> str:
        left, right = await asyncio.gather(self.leaf(f"{text} L"), self.leaf(f"{text} R"))
        return f"{left}|{right}"


class Top(Module):
    """Dynamic: one nested forward, then a call of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.middle = Middle()
        self.llm = LLMInference("fast")

    async def forward(self, text: str) -> str:
        return await self.llm(await self.middle(text))


@pytest.fixture
async def resources() -> AsyncIterator[ResourceManager]:
    async with Simulator(latency=0.02) as sim:
        endpoint = {"model": "sim", "base_url": sim.base_url, "max_concurrent": 8}
        manager = ResourceManager(ResourceConfig({"fast": endpoint}))
        try:
            yield manager
        finally:
            await manager.aclose()


def slices(events: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """The node slices by (input, node id)."""
    return {
        (event["args"]["input"], event["args"]["node"]): event
        for event in events
        if event.get("ph") == "X" and "node" in event.get("args", {})
    }


def contains(outer: dict[str, Any], ts: float, end: float | None = None) -> bool:
    end = ts if end is None else end
    return bool(outer["ts"] <= ts and end <= outer["ts"] + outer["dur"])


async def test_calls_nest_under_their_dynamic_node_in_the_chrome_trace(
    resources: ResourceManager, tmp_path: Path
) -> None:
    path = tmp_path / "profile.json"
    module = Top().bind(resources=resources, profile_path=path)
    assert len(await module(["a", "b"])) == 2
    events: list[dict[str, Any]] = json.loads(path.read_text())["traceEvents"]
    by_node = slices(events)
    starts = {event["id"]: event for event in events if event.get("ph") == "s"}
    finishes = {event["id"]: event for event in events if event.get("ph") == "f"}
    assert starts.keys() == finishes.keys()

    calls = [event for event in by_node.values() if "parent" in event["args"]]
    # per input: the middle forward, two leaves, four leaf calls and the top's own call
    assert len(calls) == 2 * 8
    nested = flowed = 0
    for call in calls:
        parent = by_node[(call["args"]["input"], call["args"]["parent"])]
        assert parent["cat"] == "dynamic"
        if (call["pid"], call["tid"]) == (parent["pid"], parent["tid"]):
            # drawn inside the forward's slice, on its lane
            assert contains(parent, call["ts"], call["ts"] + call["dur"])
            nested += 1
            continue
        (flow,) = [
            number
            for number, end in finishes.items()
            if (end["pid"], end["tid"]) == (call["pid"], call["tid"]) and end["ts"] == call["ts"]
        ]
        start = starts[flow]
        assert (start["pid"], start["tid"]) == (parent["pid"], parent["tid"])
        assert contains(parent, start["ts"])
        assert finishes[flow]["bp"] == "e"
        flowed += 1
    # each input: the middle inside the top, one of the two concurrent leaves
    # inside the middle; the other leaf and every LLM call by arrows
    assert nested == 2 * 2
    assert flowed == 2 * 6


def timing(node_id: str, started: float, finished: float, **fields: Any) -> NodeTiming:
    kind = fields.pop("kind", "dynamic")
    return NodeTiming(
        0, node_id, node_id, kind, None, None, 0, started, started, finished, **fields
    )


def test_a_call_outliving_its_forward_gets_a_lane_of_its_own() -> None:
    parent = timing("top", 0.0, 1.0)
    inside = timing("top.a#0", 0.1, 0.5, parent="top")
    late = timing("top.b#1", 0.6, 1.5, parent="top")  # abandoned, ends after the forward
    other = timing("other", 0.2, 0.3)
    data = trace_events([parent, inside, late, other], admitted={}, inputs_done={}, wall_time=2)
    placed = {e["args"]["node"]: e["tid"] for e in data["traceEvents"] if e.get("ph") == "X"}
    assert placed["top.a#0"] == placed["top"]
    assert placed["top.b#1"] != placed["top"]
    # an unrelated slice is never drawn inside a forward it happens to overlap
    assert placed["other"] != placed["top"]
    flows = [e for e in data["traceEvents"] if e.get("ph") in ("s", "f")]
    assert [(e["ph"], e["tid"]) for e in flows] == [("s", placed["top"]), ("f", placed["top.b#1"])]
