"""plait.profiling: OpenTelemetry spans, run profiles (Chrome traces) and their records.

``SpanObserver`` turns a run into OpenTelemetry spans; ``Profiler`` records
node timings and builds a :class:`Profile`, which writes a Chrome trace and
summarises where the time went. Runs attach them from their settings
(an installed OpenTelemetry SDK or ``tracer_provider=``; ``profile=True``),
so applications rarely build them directly. The telemetry half is loaded on
first use, so plait imports the OpenTelemetry API only when it is wanted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.profiling.observer import CallProbe, NodeRun, RunObserver
from plait.profiling.profile import Profile, Profiler, ProfileSummary, last_profile
from plait.profiling.timing import NodeTiming

if TYPE_CHECKING:
    from plait.profiling.telemetry import SpanObserver, tracer_for

__all__ = [
    "CallProbe",
    "NodeRun",
    "NodeTiming",
    "Profile",
    "ProfileSummary",
    "Profiler",
    "RunObserver",
    "SpanObserver",
    "last_profile",
    "tracer_for",
]


def __getattr__(name: str) -> Any:
    if name in ("SpanObserver", "tracer_for"):
        from plait.profiling import telemetry

        return getattr(telemetry, name)
    raise AttributeError(f"module 'plait.profiling' has no attribute {name!r}")
