"""Counters the simulator keeps about the traffic it served.

Benchmarks and reliability tests judge a client by what the *server* saw
(peak concurrency against ``max_concurrent``, 429s against a rate budget), so
the counters live on the server side. They are plain integer fields bumped in
place on the hot path: no per-request lists, so a million requests cost no
more memory than ten.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class SimulatorStats:
    """What the simulator has seen since it started or was last reset.

    ``requests`` counts every chat-completions request received, including the
    ones refused; ``completed`` counts well-formed 200 replies only, so a
    malformed-body fault is a fault, not a completion. ``rate_limited`` counts
    every 429, from the limiter and injected alike (an injected 429 is also
    counted under ``faults["429"]``). ``refused_formats`` counts requests whose
    ``response_format`` the simulated server's ``structured_dialect`` refused.
    ``in_flight`` and ``peak_concurrency`` count chat requests between being
    read and being answered (or dropped).
    ``first_request_at``/``last_request_at`` are ``time.monotonic()`` readings,
    comparable across processes on the same machine. ``streams`` counts
    ``stream: true`` replies begun, ``streams_completed`` those sent to the
    end and ``streams_aborted`` those whose client left before the end; a
    streamed request is in flight until its last chunk.
    """

    requests: int = 0
    completed: int = 0
    rate_limited: int = 0
    refused_formats: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_concurrency: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_request_at: float | None = None
    last_request_at: float | None = None
    models: dict[str, int] = field(default_factory=dict)
    streams: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    latencies: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> SimulatorStats:
        """Return an independent copy, so callers never see later updates."""
        copy = SimulatorStats(**{f.name: getattr(self, f.name) for f in fields(self)})
        copy.faults = dict(self.faults)
        copy.models = dict(self.models)
        copy.latencies = dict(self.latencies)
        return copy

    def reset(self) -> None:
        """Zero the counters in place, keeping what is still in flight.

        Requests being handled at reset time will still finish and decrement
        ``in_flight``, so zeroing it would drive it negative.
        """
        in_flight = self.in_flight
        for f in fields(self):
            if f.name in ("faults", "models", "latencies"):
                getattr(self, f.name).clear()
            else:
                setattr(self, f.name, f.default)
        self.in_flight = in_flight
        self.peak_concurrency = in_flight

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as a JSON-ready dict (the ``/_sim/stats`` body)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["faults"] = dict(self.faults)
        data["models"] = dict(self.models)
        data["latencies"] = dict(self.latencies)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorStats:
        """Rebuild stats from a ``/_sim/stats`` body, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
