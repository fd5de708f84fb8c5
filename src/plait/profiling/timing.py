"""The record a profile keeps of one node attempt, and the waits it implies.

Kept apart from :mod:`plait.profiling.profile` (which summarises a run) and
:mod:`plait.profiling.chrome_trace` (which draws it), because both read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class NodeTiming:
    """One attempt at one node; times are seconds from the start of the run.

    ``ready`` is when the node could first have run (its input admitted and
    its dependencies finished; for a retry, the end of the previous attempt),
    ``started`` when a worker took it, ``sent`` when its request went out
    (LLM nodes; equal to ``started`` otherwise), ``finished`` when it ended.
    ``parent`` names the dynamic node whose forward made this call.
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
    parent: str | None = None

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
