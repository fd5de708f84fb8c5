"""Per-alias usage counters: calls, outcomes, tokens and latency.

Counters are plain attribute increments because they are updated on every
LLM call. Latency goes into a fixed log-scale histogram rather than a list
of samples, so memory stays constant however long a run lasts and
percentiles stay within a few percent of the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plait.errors import ConfigError

_LOW = 1e-4  # seconds; everything faster lands in the first bucket
_RATIO = 1.04  # bucket width: percentiles are accurate to about 2%
_BUCKETS = 480  # _LOW * _RATIO**480 is about 1.5e4 s
_INV_LOG_RATIO = 1.0 / math.log(_RATIO)


class LatencyHistogram:
    """Latencies in seconds, bucketed on a log scale (bounded memory)."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, seconds: float) -> None:
        if seconds > _LOW:
            index = int(math.log(seconds / _LOW) * _INV_LOG_RATIO)
            if index >= _BUCKETS:
                index = _BUCKETS - 1
        else:
            index = 0
        self.counts[index] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        if seconds < self.min:
            self.min = seconds

    def percentile(self, q: float) -> float:
        """The latency below which a fraction ``q`` of calls finished (0 if none)."""
        if not 0 <= q <= 1:
            raise ConfigError("q must be between 0 and 1")
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        if rank >= self.count:
            return self.max
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                if index == _BUCKETS - 1:
                    break  # the overflow bucket has no upper bound
                # Geometric middle of the bucket, never outside what was seen.
                middle: float = _LOW * _RATIO ** (index + 0.5)
                return min(self.max, max(self.min, middle))
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def copy(self) -> LatencyHistogram:
        other = LatencyHistogram()
        other.counts = self.counts.copy()
        other.count = self.count
        other.total = self.total
        other.min = self.min
        other.max = self.max
        return other


@dataclass(slots=True)
class AliasUsage:
    """What one alias consumed.

    ``requests`` counts calls started; each ends as a success or a failure.
    ``rate_limited`` counts the failures that were 429s and ``retries`` the
    calls that were a task's second or later attempt. ``cache_hits`` counts
    calls answered from the response cache, which are not requests: they
    send nothing and add no tokens or cost. ``cost`` is in the currency of
    the endpoints' ``input_price``/``output_price`` (0 when none is set).
    ``rate_limit_wait`` is the total time calls spent waiting for the rate
    limiter, in seconds. Latency covers the client call of successful
    requests only (not time spent queued for a concurrency slot or rate
    permit), in seconds.
    """

    requests: int = 0
    successes: int = 0
    failures: int = 0
    retries: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_hits: int = 0
    cost: float = 0.0
    rate_limit_wait: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram, repr=False)
    streams: int = 0
    ttft: LatencyHistogram = field(default_factory=LatencyHistogram, repr=False)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def latency_p50(self) -> float:
        return self.latency.percentile(0.5)

    @property
    def latency_p90(self) -> float:
        return self.latency.percentile(0.9)

    @property
    def latency_p99(self) -> float:
        return self.latency.percentile(0.99)

    @property
    def latency_max(self) -> float:
        return self.latency.max

    @property
    def latency_mean(self) -> float:
        return self.latency.mean

    @property
    def ttft_p50(self) -> float:
        return self.ttft.percentile(0.5)

    @property
    def ttft_p95(self) -> float:
        return self.ttft.percentile(0.95)

    def copy(self) -> AliasUsage:
        """A snapshot that later calls do not change."""
        return AliasUsage(
            requests=self.requests,
            successes=self.successes,
            failures=self.failures,
            retries=self.retries,
            rate_limited=self.rate_limited,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_hits=self.cache_hits,
            cost=self.cost,
            rate_limit_wait=self.rate_limit_wait,
            latency=self.latency.copy(),
            streams=self.streams,
            ttft=self.ttft.copy(),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON reports and logs."""
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_hits": self.cache_hits,
            "cost": self.cost,
            "rate_limit_wait": self.rate_limit_wait,
            "latency_p50": self.latency_p50,
            "latency_p90": self.latency_p90,
            "latency_p99": self.latency_p99,
            "latency_max": self.latency_max,
            "latency_mean": self.latency_mean,
            "streams": self.streams,
            "ttft_p50": self.ttft_p50,
            "ttft_p95": self.ttft_p95,
        }


_COLUMNS = (
    "alias",
    "requests",
    "ok",
    "failed",
    "retries",
    "429s",
    "in tokens",
    "out tokens",
    "cache hits",
    "cost",
    "p50",
    "p90",
    "p99",
    "max",
    "mean",
    "ttft p50",
    "ttft p95",
)


def format_usage(usage: Mapping[str, AliasUsage]) -> str:
    """A fixed-width table of every alias's usage, for printing after a run."""
    rows = [list(_COLUMNS)]
    for alias, u in usage.items():
        rows.append(
            [
                alias,
                str(u.requests),
                str(u.successes),
                str(u.failures),
                str(u.retries),
                str(u.rate_limited),
                str(u.input_tokens),
                str(u.output_tokens),
                str(u.cache_hits),
                _cost(u.cost),
                _seconds(u.latency_p50),
                _seconds(u.latency_p90),
                _seconds(u.latency_p99),
                _seconds(u.latency_max),
                _seconds(u.latency_mean),
                _seconds(u.ttft_p50),
                _seconds(u.ttft_p95),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cost(value: float) -> str:
    if value == 0:
        return "-"
    return f"{value:.4f}" if value < 100 else f"{value:,.2f}"


def _seconds(value: float) -> str:
    if value == 0:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    return f"{value:.2f}s"
