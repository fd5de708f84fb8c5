"""A run's node timings as Chrome trace-event JSON, which Perfetto opens.

Perfetto (ui.perfetto.dev) and chrome://tracing read the file directly:

* one process per endpoint ("fast[0] gpt-4o-mini"), its LLM calls as slices
  with "waiting for endpoint" (concurrency slot and rate limiter) and
  "request" nested inside, and a counter of its requests in flight;
* a "plait scheduler" process for the other nodes and the run-wide counters:
  nodes running, nodes queued (ready but not yet picked up), inputs in flight.

Slices on one thread must nest, and concurrent calls overlap, so each
process spreads its slices over as few lanes (threads) as keep them apart.

A dynamic node's calls hang off its slice. One that runs in the same
process (a nested dynamic forward, a plain step) goes on the forward's own
lane, drawn inside it, when it fits there (calls made at once overlap, so
only one of them can); every other call, its LLM calls in the endpoint
processes included, gets a flow arrow from the forward's slice to its own.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plait.profiling.timing import NodeTiming

_SCHEDULER_PID = 1


def trace_events(
    nodes: list[NodeTiming],
    *,
    admitted: Mapping[int, float],
    inputs_done: Mapping[int, float],
    wall_time: float,
) -> dict[str, Any]:
    """The trace-event JSON data for a run (timestamps in microseconds).

    ``admitted`` and ``inputs_done`` map each input to when it entered and
    left the run; an input still open at the end runs to ``wall_time``.
    """
    events: list[dict[str, Any]] = []
    processes: dict[str, int] = {"plait scheduler": _SCHEDULER_PID}
    by_process: dict[int, list[NodeTiming]] = defaultdict(list)
    for node in nodes:
        if node.kind == "llm":
            name = node.endpoint or f"alias {node.alias}"
            pid = processes.setdefault(name, len(processes) + 1)
        else:
            pid = _SCHEDULER_PID
        by_process[pid].append(node)
    for name, pid in processes.items():
        events.append(_meta("process_name", pid, 0, name))
        events.append(
            {"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}}
        )
    parents = _parents(nodes)
    placed: dict[int, tuple[int, int]] = {}
    for pid, members in by_process.items():
        lanes = _assign_lanes(members, parents)
        for lane in sorted(set(lanes.values())):
            events.append(_meta("thread_name", pid, lane, f"lane {lane}"))
        for node in members:
            placed[id(node)] = (pid, lanes[id(node)])
            events.extend(_slices(node, pid, lanes[id(node)]))
        if pid != _SCHEDULER_PID:
            llm = [(node.sent, node.finished) for node in members if not node.cache_hit]
            events.extend(_counter("requests in flight", pid, llm))
    events.extend(_flows(nodes, parents, placed))
    events.extend(
        _counter("nodes running", _SCHEDULER_PID, [(n.started, n.finished) for n in nodes])
    )
    events.extend(_counter("nodes queued", _SCHEDULER_PID, [(n.ready, n.started) for n in nodes]))
    spans = [(start, inputs_done.get(index, wall_time)) for index, start in admitted.items()]
    events.extend(_counter("inputs in flight", _SCHEDULER_PID, spans))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"producer": "plait", "wall_time_s": wall_time},
    }


def write_trace(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write trace data to ``path`` as compact JSON and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as file:
        json.dump(data, file, separators=(",", ":"))
    return target


def _parents(nodes: list[NodeTiming]) -> dict[int, NodeTiming]:
    """The dynamic node's slice each call was made by (by the call's object id).

    A dynamic node runs once (it is never retried as a whole), so its input
    and id name it.
    """
    by_name = {(node.index, node.node_id): node for node in nodes if node.kind == "dynamic"}
    found: dict[int, NodeTiming] = {}
    for node in nodes:
        if node.parent is not None:
            parent = by_name.get((node.index, node.parent))
            if parent is not None:
                found[id(node)] = parent
    return found


def _assign_lanes(nodes: list[NodeTiming], parents: dict[int, NodeTiming]) -> dict[int, int]:
    """Spread slices over the fewest lanes on which none overlap (by object id).

    A call goes inside its dynamic node's slice, on the same lane, when
    that slice is the innermost one open there and the call ends within
    it; otherwise it takes the lowest free lane.
    """
    lanes: dict[int, int] = {}
    stacks: dict[int, list[NodeTiming]] = {}
    busy: list[tuple[float, int]] = []
    free: list[int] = []
    count = 0
    for node in sorted(nodes, key=lambda node: (node.started, -node.finished)):
        while busy and busy[0][0] <= node.started:
            _, done = heapq.heappop(busy)
            stacks[done].clear()
            heapq.heappush(free, done)
        lane = _inside_parent(node, parents.get(id(node)), lanes, stacks)
        if lane is None:
            if free:
                lane = heapq.heappop(free)
            else:
                count += 1
                lane = count
            heapq.heappush(busy, (node.finished, lane))
        lanes[id(node)] = lane
        stacks.setdefault(lane, []).append(node)
    return lanes


def _inside_parent(
    node: NodeTiming,
    parent: NodeTiming | None,
    lanes: dict[int, int],
    stacks: dict[int, list[NodeTiming]],
) -> int | None:
    """The parent's lane, if ``node`` can be drawn inside the parent's slice there."""
    if parent is None or id(parent) not in lanes:
        return None
    lane = lanes[id(parent)]
    stack = stacks[lane]
    while stack and stack[-1].finished <= node.started:
        stack.pop()
    if stack and stack[-1] is parent and node.finished <= parent.finished:
        return lane
    return None


def _flows(
    nodes: list[NodeTiming],
    parents: dict[int, NodeTiming],
    placed: dict[int, tuple[int, int]],
) -> list[dict[str, Any]]:
    """An arrow from a dynamic node's slice to each of its calls drawn elsewhere."""
    events: list[dict[str, Any]] = []
    for number, node in enumerate(nodes):
        parent = parents.get(id(node))
        if parent is None:
            continue
        (pid, tid), (parent_pid, parent_tid) = placed[id(node)], placed[id(parent)]
        if (pid, tid) == (parent_pid, parent_tid):
            continue  # drawn inside the parent's slice already
        made = _us(min(max(node.started, parent.started), parent.finished))
        common = {"name": "call", "cat": "dynamic call", "id": number}
        events.append({**common, "ph": "s", "pid": parent_pid, "tid": parent_tid, "ts": made})
        events.append(
            {**common, "ph": "f", "bp": "e", "pid": pid, "tid": tid, "ts": _us(node.started)}
        )
    return events


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _meta(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def _slices(node: NodeTiming, pid: int, tid: int) -> list[dict[str, Any]]:
    args: dict[str, Any] = {
        "input": node.index,
        "node": node.node_id,
        "attempt": node.attempt,
        "queue_wait_ms": round(node.queue_wait * 1e3, 3),
        "run_ms": round(node.run_time * 1e3, 3),
    }
    if node.kind == "llm":
        args.update(
            alias=node.alias,
            endpoint_wait_ms=round(node.endpoint_wait * 1e3, 3),
            rate_limit_wait_ms=round(node.rate_wait * 1e3, 3),
            input_tokens=node.input_tokens,
            output_tokens=node.output_tokens,
            cache_hit=node.cache_hit,
        )
    if node.error is not None:
        args["error"] = node.error
    if node.parent is not None:
        args["parent"] = node.parent
    slices = [
        {
            "name": node.label,
            "cat": node.kind,
            "ph": "X",
            "pid": pid,
            "tid": tid,
            "ts": _us(node.started),
            "dur": _us(node.run_time),
            "args": args,
        }
    ]
    if node.kind == "llm" and not node.cache_hit:
        if node.endpoint_wait > 0:
            slices.append(
                {
                    "name": "waiting for endpoint",
                    "cat": "wait",
                    "ph": "X",
                    "pid": pid,
                    "tid": tid,
                    "ts": _us(node.started),
                    "dur": _us(node.endpoint_wait),
                }
            )
        slices.append(
            {
                "name": "request",
                "cat": "request",
                "ph": "X",
                "pid": pid,
                "tid": tid,
                "ts": _us(node.sent),
                "dur": _us(node.request_time),
            }
        )
    return slices


def _counter(name: str, pid: int, spans: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """A counter track that is, at each moment, the number of spans open."""
    changes: list[tuple[float, int]] = []
    for start, end in spans:
        changes.append((start, 1))
        changes.append((max(start, end), -1))
    changes.sort()
    events: list[dict[str, Any]] = []
    level = 0
    for at, step in changes:
        level += step
        event = {"name": name, "ph": "C", "pid": pid, "ts": _us(at), "args": {name: level}}
        if events and events[-1]["ts"] == event["ts"]:
            events[-1] = event
        else:
            events.append(event)
    return events
