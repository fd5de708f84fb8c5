"""Run profiles: the Chrome trace file and the summary available from Python."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference
from plait.profiling import Profile, last_profile
from plait.testing import FakeResources
from support.llm import SECRET, echo_llm, manager
from support.modules import Chain, FanOut
from support.resources import by_prompt

GUARD = 30.0


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GUARD)


def slices(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [event for event in trace["traceEvents"] if event["ph"] == "X"]


def names_of(trace: dict[str, Any], kind: str) -> dict[tuple[int, int], str]:
    return {
        (event["pid"], event.get("tid", 0)): event["args"]["name"]
        for event in trace["traceEvents"]
        if event["ph"] == "M" and event["name"] == kind
    }


async def test_the_profile_file_parses_and_has_an_event_for_every_node(tmp_path: Path) -> None:
    fake = echo_llm(latency=0.002)
    path = tmp_path / "profile.json"
    module = FanOut(width=3).bind(resources=manager(fake), profile_path=path)
    await bounded(module([f"q{index}" for index in range(5)]))
    trace = json.loads(path.read_text())
    nodes = [event for event in slices(trace) if event["cat"] == "llm"]
    seen = {(event["args"]["input"], event["args"]["node"]) for event in nodes}
    expected = {
        (index, node) for index in range(5) for node in ("branch0", "branch1", "branch2", "join")
    }
    assert seen == expected
    assert len(nodes) == 20
    # One process per endpoint, with the request slices nested in each node's slice.
    processes = names_of(trace, "process_name")
    assert "fast[0] fake-model" in processes.values()
    requests = [event for event in slices(trace) if event["name"] == "request"]
    assert len(requests) == 20
    counters = {event["name"] for event in trace["traceEvents"] if event["ph"] == "C"}
    assert {"nodes running", "nodes queued", "inputs in flight", "requests in flight"} <= counters
    assert all(event["args"]["queue_wait_ms"] >= 0 for event in nodes)


async def test_slices_on_one_lane_never_overlap(tmp_path: Path) -> None:
    fake = echo_llm(latency=0.003)
    path = tmp_path / "p.json"
    module = Chain().bind(resources=manager(fake, max_concurrent=4), profile_path=path)
    await bounded(module([f"q{index}" for index in range(12)]))
    lanes: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for event in slices(json.loads(path.read_text())):
        if event["cat"] in ("llm", "op"):
            lanes[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
    assert len(lanes) > 1
    for spans in lanes.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end


async def test_the_summary_names_the_critical_path_and_slowest_nodes(tmp_path: Path) -> None:
    fake = FakeResources(latency=by_prompt({"then:fast(slow)": 0.05}))
    call = Chain().bind(resources=fake).batch(["fast", "slow"], profile_path=tmp_path / "p.json")
    await bounded(call)
    profile = call.profile
    assert isinstance(profile, Profile)
    assert last_profile() is profile
    summary = profile.summary(top=1)
    path = [(step.index, step.node_id) for step in summary.critical_path]
    assert path == [(1, "first"), (1, "second")]
    assert summary.slowest[0].node_id == "second"
    assert summary.slowest[0].index == 1
    assert summary.node_runs == 4
    text = str(summary)
    assert "critical path (2 nodes" in text
    assert "input 1 second" in text


async def test_profile_true_writes_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    module = LLMInference("fast").bind(resources=FakeResources(), profile=True)
    await bounded(module(["a"]))
    assert_one_profile_in(tmp_path)


def assert_one_profile_in(directory: Path) -> None:
    (written,) = directory.glob("plait-profile-*.json")
    assert json.loads(written.read_text())["traceEvents"]


async def test_rate_limit_waits_are_measured(tmp_path: Path) -> None:
    fake = echo_llm()
    resources = manager(fake, rate_limit=1200.0)
    module = LLMInference("fast").bind(resources=resources)
    call = module.batch(["a", "b", "c", "d"], profile_path=tmp_path / "p.json")
    await bounded(call)
    assert call.profile is not None
    summary = call.profile.summary()
    # Paced at 20 per second, four calls wait about 0.15 s in total.
    assert summary.rate_limit_wait > 0.05
    assert summary.endpoint_wait >= summary.rate_limit_wait
    assert resources.usage()["fast"].rate_limit_wait == pytest.approx(
        summary.rate_limit_wait, rel=0.01
    )


async def test_cache_hits_show_in_the_profile(tmp_path: Path) -> None:
    fake = echo_llm()
    module = LLMInference("fast").bind(resources=manager(fake), cache=tmp_path)
    await bounded(module(["a"]))
    call = module.batch(["a", "b"], profile=True, profile_path=tmp_path / "p.json")
    await bounded(call)
    assert call.profile is not None
    summary = call.profile.summary()
    assert (summary.cache_hits, summary.llm_calls) == (1, 1)
    assert SECRET not in (tmp_path / "p.json").read_text()
