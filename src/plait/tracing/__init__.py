"""Tracing: turning a module's forward() into an InferenceGraph."""

from plait.tracing.context import current_tracer
from plait.tracing.proxy import Proxy
from plait.tracing.tracer import Tracer, trace

__all__ = ["Proxy", "Tracer", "current_tracer", "trace"]
