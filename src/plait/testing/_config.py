"""The simulator's settings, validated once so the hot path can trust them."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from plait.testing._dialects import STRUCTURED_DIALECTS, StructuredDialectName
from plait.testing._tool_calls import ToolCallReply

FAULT_KINDS: tuple[str, ...] = ("503", "reset", "malformed", "stall", "429")
"""The kinds ``fault_rate`` draws from by default."""
OPT_IN_FAULT_KINDS: tuple[str, ...] = ("quota", "cut")
"""Kinds that are only acted out when named: a ``quota`` 429 fails a call for good,
so drawing it by default would turn every fault test's retries into failures; a
``cut`` (a stream dropped after its first delta) fails a streamed call for good too."""

ReplyFn = Callable[[dict[str, Any]], str | dict[str, Any] | BaseModel | ToolCallReply]
RuleReply = str | ToolCallReply
FaultFn = Callable[[int, dict[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything that shapes the simulator's behaviour; see ``Simulator`` for each field.

    Validation happens here, once, so a typo in a benchmark's settings fails at
    construction rather than as a confusing reply mid-run.
    """

    port: int = 0
    latency: float = 0.0
    latency_jitter: float = 0.0
    latency_sigma: float = 0.0
    record_latencies: bool = False
    rate_limit: float | None = None
    rate_window: float = 60.0
    rate_burst: float | None = None
    rate_sliding: bool = False
    fault_rate: float = 0.0
    faults: Sequence[str] = FAULT_KINDS
    stall_seconds: float = 30.0
    retry_after: float = 0.05
    seed: int | None = None
    fault: FaultFn | None = None
    reply: ReplyFn | None = None
    rules: Sequence[tuple[str, RuleReply]] = ()
    stream_pace: float = 0.0
    stream_chunk_chars: int = 4
    structured_dialect: StructuredDialectName = "any"

    def __post_init__(self) -> None:
        if isinstance(self.faults, str):
            raise TypeError("faults must be a sequence of fault kinds, not a single string")
        # Frozen, so normalise through object.__setattr__: callers may pass lists.
        object.__setattr__(self, "faults", tuple(self.faults))
        object.__setattr__(self, "rules", tuple((str(p), _rule_reply(r)) for p, r in self.rules))
        _require(0 <= self.port <= 65535, "port must be between 0 and 65535")
        _require(_finite(self.latency) and self.latency >= 0, "latency must be >= 0")
        _require(
            _finite(self.latency_jitter) and self.latency_jitter >= 0,
            "latency_jitter must be >= 0",
        )
        _require(
            _finite(self.latency_sigma) and self.latency_sigma >= 0, "latency_sigma must be >= 0"
        )
        _require(
            not (self.latency_sigma and self.latency_jitter),
            "latency_sigma and latency_jitter are alternatives; set one",
        )
        _require(_finite(self.rate_window) and self.rate_window > 0, "rate_window must be > 0")
        if self.rate_limit is not None:
            _require(_finite(self.rate_limit) and self.rate_limit > 0, "rate_limit must be > 0")
        if self.rate_burst is not None:
            _require(_finite(self.rate_burst) and self.rate_burst >= 1, "rate_burst must be >= 1")
        _require(0 <= self.fault_rate <= 1, "fault_rate must be between 0 and 1")
        _require(bool(self.faults), "faults must name at least one fault kind")
        for kind in self.faults:
            check_fault_kind(kind)
        _require(
            _finite(self.stall_seconds) and self.stall_seconds >= 0, "stall_seconds must be >= 0"
        )
        _require(_finite(self.retry_after) and self.retry_after >= 0, "retry_after must be >= 0")
        _require(_finite(self.stream_pace) and self.stream_pace >= 0, "stream_pace must be >= 0")
        _require(
            isinstance(self.stream_chunk_chars, int) and self.stream_chunk_chars >= 1,
            "stream_chunk_chars must be an int >= 1",
        )
        _require(
            self.structured_dialect in STRUCTURED_DIALECTS,
            f"structured_dialect must be one of {', '.join(STRUCTURED_DIALECTS)}, "
            f"got {self.structured_dialect!r}",
        )
        for pattern, _ in self.rules:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"rules: invalid regex {pattern!r}: {exc}") from exc

    @property
    def rate_per_second(self) -> float | None:
        """Token refill rate, or None when no limit is enforced."""
        return None if self.rate_limit is None else self.rate_limit / self.rate_window

    @property
    def bucket_capacity(self) -> float:
        """Burst size: ``rate_burst``, else one second's worth of tokens (at least 1)."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1.0, self.rate_per_second or 1.0)


def check_fault_kind(kind: str) -> None:
    """Reject fault names the server does not know how to act out."""
    if kind not in FAULT_KINDS and kind not in OPT_IN_FAULT_KINDS:
        known = ", ".join(FAULT_KINDS + OPT_IN_FAULT_KINDS)
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {known}")


def _rule_reply(reply: object) -> RuleReply:
    return reply if isinstance(reply, ToolCallReply) else str(reply)


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
