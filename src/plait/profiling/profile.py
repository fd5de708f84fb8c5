"""Run profiles: where a run's time went, collected during the run and summarised.

A :class:`Profiler` keeps one compact record per node attempt (timestamps,
endpoint, tokens) and, when the run ends, builds a :class:`Profile`, which
can write itself as a Chrome trace (:mod:`plait.profiling.chrome_trace`).

:meth:`Profile.summary` answers the usual questions from Python: the
critical path (the chain of nodes that finished last), the slowest nodes,
and how much time went to queueing, to waiting on endpoints and rate limits,
and to the requests themselves.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.profiling.chrome_trace import trace_events, write_trace
from plait.profiling.observer import NodeRun, RunObserver
from plait.profiling.timing import NodeTiming

logger = logging.getLogger("plait")


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
        return trace_events(
            self.nodes,
            admitted=self.admitted,
            inputs_done=self.inputs_done,
            wall_time=self.wall_time,
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the Chrome trace to ``path`` and return it."""
        return write_trace(self.chrome_trace(), path)


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
            label=run.node_id if run.parent is not None else node.module_path or run.node_id,
            kind=node.kind.value,
            alias=run.alias,
            endpoint=None,
            attempt=run.attempt,
            started=started,
            sent=sent,
            finished=finished,
            error=type(run.error).__name__ if run.error is not None else None,
            dependencies=tuple(node.dependencies),
            parent=None if run.parent is None else run.parent.node_id,
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
