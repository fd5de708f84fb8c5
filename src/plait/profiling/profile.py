"""Run profiles: where a run's time went, as a Chrome trace and as a summary.

A :class:`Profiler` keeps one compact record per node attempt (timestamps,
endpoint, tokens) and, when the run ends, builds a :class:`Profile`. The
profile writes Chrome's trace-event JSON, which Perfetto (ui.perfetto.dev)
and chrome://tracing open directly:

* one process per endpoint ("fast[0] gpt-4o-mini"), its LLM calls as slices
  with "waiting for endpoint" (concurrency slot and rate limiter) and
  "request" nested inside, and a counter of its requests in flight;
* a "plait scheduler" process for the other nodes and the run-wide counters:
  nodes running, nodes queued (ready but not yet picked up), inputs in flight.

Slices on one thread must nest, and concurrent calls overlap, so each
process spreads its slices over as few lanes (threads) as keep them apart.

:meth:`Profile.summary` answers the usual questions from Python: the
critical path (the chain of nodes that finished last), the slowest nodes,
and how much time went to queueing, to waiting on endpoints and rate limits,
and to the requests themselves.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.profiling.observer import NodeRun, RunObserver

logger = logging.getLogger("plait")

_SCHEDULER_PID = 1


@dataclass(slots=True)
class NodeTiming:
    """One attempt at one node; times are seconds from the start of the run.

    ``ready`` is when the node could first have run (its input admitted and
    its dependencies finished; for a retry, the end of the previous attempt),
    ``started`` when a worker took it, ``sent`` when its request went out
    (LLM nodes; equal to ``started`` otherwise), ``finished`` when it ended.
    """

    index: int
    node_id: str
    label: str
    kind: str
    alias: str | None
    endpoint: str | None
    attempt: int
    started: float
    sent: float
    finished: float
    slot_wait: float = 0.0
    rate_wait: float = 0.0
    error: str | None = None
    cache_hit: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    dependencies: tuple[str, ...] = ()
    ready: float = 0.0

    @property
    def queue_wait(self) -> float:
        return max(0.0, self.started - self.ready)

    @property
    def endpoint_wait(self) -> float:
        return max(0.0, self.sent - self.started)

    @property
    def run_time(self) -> float:
        return max(0.0, self.finished - self.started)

    @property
    def request_time(self) -> float:
        return max(0.0, self.finished - self.sent)

    def describe(self) -> str:
        parts = [f"queued {self.queue_wait:.3f}s"]
        if self.kind == "llm":
            parts.append(f"endpoint {self.endpoint_wait:.3f}s")
            parts.append(f"request {self.request_time:.3f}s")
        else:
            parts.append(f"ran {self.run_time:.3f}s")
        retry = f", attempt {self.attempt + 1}" if self.attempt else ""
        return f"input {self.index} {self.label}{retry} ({', '.join(parts)})"


@dataclass(slots=True)
class ProfileSummary:
    """The headline numbers of a profile; ``str()`` gives a short report."""

    wall_time: float
    node_runs: int
    llm_calls: int
    retries: int
    cache_hits: int
    queue_wait: float
    endpoint_wait: float
    rate_limit_wait: float
    request_time: float
    critical_path: list[NodeTiming] = field(default_factory=list)
    slowest: list[NodeTiming] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"wall time {self.wall_time:.3f}s; {self.node_runs} node runs "
            f"({self.llm_calls} LLM calls, {self.cache_hits} cache hits, {self.retries} retries)",
            f"summed over nodes: queued {self.queue_wait:.3f}s, waiting for endpoints "
            f"{self.endpoint_wait:.3f}s (rate limits {self.rate_limit_wait:.3f}s), "
            f"requests {self.request_time:.3f}s",
        ]
        if self.critical_path:
            end = self.critical_path[-1].finished
            lines.append(f"critical path ({len(self.critical_path)} nodes, ends at {end:.3f}s):")
            lines.extend(f"  {step.describe()}" for step in self.critical_path)
        if self.slowest:
            lines.append("slowest nodes:")
            lines.extend(f"  {node.run_time:.3f}s  {node.describe()}" for node in self.slowest)
        return "\n".join(lines)


class Profile:
    """Every node attempt of one run, with what to make of them."""

    def __init__(
        self,
        nodes: list[NodeTiming],
        *,
        wall_time: float,
        admitted: dict[int, float],
        inputs_done: dict[int, float],
        started_at: float,
    ) -> None:
        self.nodes = nodes
        self.wall_time = wall_time
        self.admitted = admitted
        self.inputs_done = inputs_done
        self.started_at = started_at
        _fill_ready(nodes, admitted)

    def summary(self, top: int = 5) -> ProfileSummary:
        llm = [node for node in self.nodes if node.kind == "llm"]
        return ProfileSummary(
            wall_time=self.wall_time,
            node_runs=len(self.nodes),
            llm_calls=sum(1 for node in llm if not node.cache_hit),
            retries=sum(1 for node in self.nodes if node.attempt),
            cache_hits=sum(1 for node in llm if node.cache_hit),
            queue_wait=sum(node.queue_wait for node in self.nodes),
            endpoint_wait=sum(node.endpoint_wait for node in llm),
            rate_limit_wait=sum(node.rate_wait for node in llm),
            request_time=sum(node.request_time for node in llm),
            critical_path=self.critical_path(),
            slowest=sorted(self.nodes, key=lambda node: node.run_time, reverse=True)[:top],
        )

    def critical_path(self) -> list[NodeTiming]:
        """The chain of nodes that ended last, each the dependency that finished latest."""
        final = _final_attempts(self.nodes)
        if not final:
            return []
        step = max(final.values(), key=lambda node: node.finished)
        path = [step]
        while True:
            upstream = [
                final[(step.index, dep)] for dep in step.dependencies if (step.index, dep) in final
            ]
            if not upstream:
                break
            step = max(upstream, key=lambda node: node.finished)
            path.append(step)
        path.reverse()
        return path

    def chrome_trace(self) -> dict[str, Any]:
        """The profile as Chrome trace-event JSON data (timestamps in microseconds)."""
        events: list[dict[str, Any]] = []
        processes: dict[str, int] = {"plait scheduler": _SCHEDULER_PID}
        by_process: dict[int, list[NodeTiming]] = defaultdict(list)
        for node in self.nodes:
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
        for pid, nodes in by_process.items():
            lanes = _assign_lanes(nodes)
            for lane in sorted(set(lanes.values())):
                events.append(_meta("thread_name", pid, lane, f"lane {lane}"))
            for node in nodes:
                events.extend(_slices(node, pid, lanes[id(node)]))
            if pid != _SCHEDULER_PID:
                llm = [(node.sent, node.finished) for node in nodes if not node.cache_hit]
                events.extend(_counter("requests in flight", pid, llm))
        events.extend(
            _counter("nodes running", _SCHEDULER_PID, [(n.started, n.finished) for n in self.nodes])
        )
        events.extend(
            _counter("nodes queued", _SCHEDULER_PID, [(n.ready, n.started) for n in self.nodes])
        )
        spans = [
            (start, self.inputs_done.get(index, self.wall_time))
            for index, start in self.admitted.items()
        ]
        events.extend(_counter("inputs in flight", _SCHEDULER_PID, spans))
        return {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {"producer": "plait", "wall_time_s": self.wall_time},
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the Chrome trace to ``path`` and return it."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as file:
            json.dump(self.chrome_trace(), file, separators=(",", ":"))
        return target


class Profiler(RunObserver):
    """Collects a run's node timings; builds (and optionally writes) its Profile at the end."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = path
        self._origin = time.perf_counter()
        self._started_at = time.time()
        self._nodes: list[NodeTiming] = []
        self._admitted: dict[int, float] = {}
        self._inputs_done: dict[int, float] = {}
        self.profile: Profile | None = None
        self.written: Path | None = None

    def input_started(self, index: int) -> None:
        self._admitted[index] = time.perf_counter() - self._origin

    def input_finished(self, index: int, error: BaseException | None, restored: bool) -> None:
        self._inputs_done[index] = time.perf_counter() - self._origin

    def node_finished(self, run: NodeRun) -> None:
        origin = self._origin
        node = run.node
        started = run.started - origin
        finished = run.finished - origin
        sent = started
        timing = NodeTiming(
            index=run.index,
            node_id=run.node_id,
            label=node.module_path or run.node_id,
            kind=node.kind.value,
            alias=run.alias,
            endpoint=None,
            attempt=run.attempt,
            started=started,
            sent=sent,
            finished=finished,
            error=type(run.error).__name__ if run.error is not None else None,
            dependencies=tuple(node.dependencies),
        )
        probe = run.probe
        if probe is not None and probe.started:
            timing.endpoint = probe.endpoint or None
            timing.sent = (probe.sent or probe.done or run.finished) - origin
            timing.slot_wait = probe.slot_wait
            timing.rate_wait = probe.rate_wait
            timing.cache_hit = probe.cache_hit
        response = run.response
        if response is not None:
            timing.input_tokens = response.input_tokens
            timing.output_tokens = response.output_tokens
        self._nodes.append(timing)

    def run_finished(self, error: BaseException | None) -> None:
        self.profile = Profile(
            self._nodes,
            wall_time=time.perf_counter() - self._origin,
            admitted=self._admitted,
            inputs_done=self._inputs_done,
            started_at=self._started_at,
        )
        global _last
        _last = self.profile
        if self.path is not None:
            self.written = self.profile.write(self.path)
            logger.info("plait profile written to %s", self.written)


def default_profile_path() -> Path:
    """``plait-profile-<date>-<time>-<pid>.json`` in the working directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / f"plait-profile-{stamp}-{os.getpid()}.json"


_last: Profile | None = None


def last_profile() -> Profile | None:
    """The profile of the most recent profiled run in this process, if any."""
    return _last


def _final_attempts(nodes: Iterable[NodeTiming]) -> dict[tuple[int, str], NodeTiming]:
    final: dict[tuple[int, str], NodeTiming] = {}
    for node in nodes:
        key = (node.index, node.node_id)
        seen = final.get(key)
        if seen is None or node.finished >= seen.finished:
            final[key] = node
    return final


def _fill_ready(nodes: list[NodeTiming], admitted: dict[int, float]) -> None:
    """Work out when each attempt could have started (see :class:`NodeTiming`)."""
    final = _final_attempts(nodes)
    attempts: dict[tuple[int, str], list[NodeTiming]] = defaultdict(list)
    for node in nodes:
        attempts[(node.index, node.node_id)].append(node)
    for (index, _), tries in attempts.items():
        tries.sort(key=lambda node: node.started)
        first = tries[0]
        ready = admitted.get(index, 0.0)
        for dep in first.dependencies:
            upstream = final.get((index, dep))
            if upstream is not None and upstream.finished > ready:
                ready = upstream.finished
        first.ready = min(ready, first.started)
        for previous, retry in itertools.pairwise(tries):
            retry.ready = min(previous.finished, retry.started)


def _assign_lanes(nodes: list[NodeTiming]) -> dict[int, int]:
    """Spread slices over the fewest lanes on which none overlap (by object id)."""
    lanes: dict[int, int] = {}
    free: list[tuple[float, int]] = []
    count = 0
    for node in sorted(nodes, key=lambda node: (node.started, node.finished)):
        if free and free[0][0] <= node.started:
            _, lane = heapq.heappop(free)
        else:
            count += 1
            lane = count
        lanes[id(node)] = lane
        heapq.heappush(free, (node.finished, lane))
    return lanes


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
