"""What a run needs beyond plain execution, set up from its settings.

Spans, a profile, the response cache, a spending budget and a checkpoint are
each off unless a setting asks for them, and a run with none of them gives
the scheduler no hooks at all, so plain runs pay nothing for the features.
Everything is checked and opened before the first input is admitted: a
setting that cannot be honoured fails the call before any request is sent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plait.errors import ConfigError
from plait.execution.budget import Budget
from plait.execution.dynamic import Replay
from plait.execution.settings import ResolvedSettings
from plait.execution.state import ExecutionState
from plait.profiling.observer import RunObserver, combine
from plait.profiling.profile import Profiler, default_profile_path
from plait.resources.endpoint import MAX_ENDPOINT_PAUSE
from plait.resources.manager import ResourceManager
from plait.resources.protocol import ResourceManagerLike

if TYPE_CHECKING:
    from plait.storage.cache import RunCache
    from plait.storage.checkpoint_session import CheckpointSession


@dataclass(slots=True)
class RunHooks:
    """The optional features of a run that reach into node execution.

    Each is None (or False) when its feature is off, and the scheduler then
    pays nothing for it: with no observer, cache or budget, nodes take the
    plain path, and ``on_node_done`` costs one ``is None`` test per node.

    ``probes`` says the resource manager accepts ``cache=``, ``probe=`` and
    ``max_pause=`` (a real :class:`~plait.resources.ResourceManager` does;
    test doubles need not). ``max_pause`` is the run's ``max_retry_after``
    when it is below the pause an endpoint sets on a burst of 429s.
    ``on_node_done(state, node_id, value)`` runs after a node's result is
    recorded (checkpointing); ``on_budget_exceeded()`` runs once, after the
    scheduler has stopped starting work.
    """

    observer: RunObserver | None = None
    cache: RunCache | None = None
    budget: Budget | None = None
    probes: bool = False
    max_pause: float | None = None
    on_node_done: Callable[[ExecutionState, str, Any], None] | None = None
    on_budget_exceeded: Callable[[], None] | None = None
    replay: Callable[[ExecutionState, str], Replay | None] | None = None

    @property
    def observing(self) -> bool:
        """Whether nodes must take the path that records what they do."""
        return (
            self.observer is not None
            or self.cache is not None
            or self.budget is not None
            or self.max_pause is not None
        )


@dataclass(slots=True)
class RunFeatures:
    """The optional features one run uses; each field is None when its feature is off.

    ``probes`` says the resources are a real ResourceManager, which can
    report cache hits and costs for each call (test doubles need not).
    """

    observer: RunObserver | None = None
    profiler: Profiler | None = None
    cache: RunCache | None = None
    budget: Budget | None = None
    checkpoint: CheckpointSession | None = None
    probes: bool = False
    max_pause: float | None = None

    def hooks(
        self,
        on_node_done: Callable[[ExecutionState, str, Any], None],
        on_budget_exceeded: Callable[[], None],
        replay: Callable[[ExecutionState, str], Replay | None] | None = None,
    ) -> RunHooks | None:
        """The scheduler's hooks for these features (None if nothing is on).

        The callbacks are handed on only when their feature is on, so the
        scheduler tests a None, not a flag, on its hot path.
        """
        features = (self.observer, self.cache, self.budget, self.checkpoint, self.max_pause)
        if features == (None, None, None, None, None):
            return None
        return RunHooks(
            observer=self.observer,
            cache=self.cache,
            budget=self.budget,
            probes=self.probes,
            max_pause=self.max_pause,
            on_node_done=on_node_done if self.checkpoint is not None else None,
            on_budget_exceeded=on_budget_exceeded if self.budget is not None else None,
            replay=replay if self.checkpoint is not None else None,
        )


def run_features(
    settings: ResolvedSettings,
    resources: ResourceManagerLike | None,
    *,
    module: Any,
    total: int | None,
    training: bool,
) -> RunFeatures:
    """Open what ``settings`` ask for; ConfigError if the run cannot honour it."""
    features = RunFeatures()
    if settings.profile or settings.profile_path is not None:
        path = settings.profile_path
        features.profiler = Profiler(path if path is not None else default_profile_path())
    features.observer = combine([_span_observer(settings), features.profiler])
    features.probes = isinstance(resources, ResourceManager)
    if features.probes and settings.max_retry_after < MAX_ENDPOINT_PAUSE:
        features.max_pause = settings.max_retry_after
    endpoint_caches = isinstance(resources, ResourceManager) and resources.has_endpoint_caches
    if (settings.cache is not None and settings.cache is not False) or endpoint_caches:
        # Endpoints' own caches number this run's samples too (DESIGN 12).
        from plait.storage.cache import RunCache, open_cache

        features.cache = RunCache(open_cache(settings.cache))
    if settings.max_tokens_total is not None or settings.max_cost is not None:
        features.budget = Budget(settings.max_tokens_total, settings.max_cost)
    needs_manager = [
        name
        for name, used in (("cache", features.cache is not None), ("max_cost", settings.max_cost))
        if used
    ]
    if needs_manager and not features.probes:
        raise ConfigError(
            f"{' and '.join(needs_manager)} need(s) resources that are a plait "
            f"ResourceManager (or a ResourceConfig), got {type(resources).__name__}"
        )
    if settings.checkpoint_dir is not None:
        if training:
            raise ConfigError(
                "checkpoint_dir cannot be used in training mode: restored outputs would lack "
                "the forward record that backward() needs; call module.eval() first"
            )
        from plait.storage.checkpoint_session import CheckpointSession

        features.checkpoint = CheckpointSession(
            settings.checkpoint_dir,
            module=module,
            total=total,
            mismatch=settings.checkpoint_mismatch,
        )
    return features


def flush_caches() -> None:
    """Wait until every response cache of this process has its replies on disk.

    A run calls this as it ends, so a caller that got its results back can be
    killed without losing the replies behind them. No cache can be open before
    :mod:`plait.storage.cache_store` is imported, so plain runs do not import it.

    Raises:
        WriterError: a cache could not be written.
    """
    stores = sys.modules.get("plait.storage.cache_store")
    if stores is not None:
        stores.flush_all()


def _span_observer(settings: ResolvedSettings) -> RunObserver | None:
    """Spans for this run, if anyone can receive them.

    An OpenTelemetry SDK can only have been set up by code that imported the
    API, so until something has, plait does not import it either.
    """
    if settings.tracer_provider is None and "opentelemetry.trace" not in sys.modules:
        return None
    from plait.profiling.telemetry import SpanObserver, tracer_for

    tracer = tracer_for(settings.tracer_provider)
    if tracer is None:
        return None
    return SpanObserver(tracer, capture_content=settings.capture_content)
