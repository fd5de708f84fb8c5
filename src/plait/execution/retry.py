"""The retry policy: whether a failed node runs again, and after how long.

Three kinds of failure are told apart. A 429 means the endpoint is busy, not
that the request is bad: the node is requeued after the server's
``Retry-After`` (never longer than ``max_retry_after``) without spending its
retry budget, until it has waited ``max_rate_limit_wait`` in total since its
first 429, or has been refused :data:`MAX_RATE_LIMIT_REQUEUES` times; then
it fails with that :class:`RateLimitError`, noted with why it gave up. A call
the resource manager handed back without sending it
(:class:`EndpointBackoffError`) spends the same time budget, not the count.
Transient failures (5xx, dropped connections, timeouts) are retried up to
the endpoint's ``max_retries``, or ``max_task_retries`` when the endpoint
sets none. Anything else is permanent and fails the node at once. Delays
grow exponentially with half jitter, so the retries of a burst of failures
spread out instead of arriving together.
"""

from __future__ import annotations

import random
import time

from plait.errors import (
    EndpointBackoffError,
    PlaitError,
    RateLimitError,
    TaskTimeoutError,
    TransientError,
)
from plait.execution.settings import ResolvedSettings
from plait.execution.state import ExecutionState
from plait.graph import NodeKind
from plait.resources.protocol import ResourceManagerLike

MAX_RATE_LIMIT_REQUEUES = 50
"""A node refused by 429s more often than this fails: the endpoint is not recovering."""

MAX_BACKOFF = 60.0
"""Seconds; the longest wait before a retry, however many attempts came before."""

# Past this many nodes being timed for rate limits, forget the ones that have
# since finished; a node waiting out a retry stays in progress, so it is kept.
_PRUNE_AT = 1024


class RetryPolicy:
    """Decides, for one run, what happens to a node that raised."""

    def __init__(self, settings: ResolvedSettings, resources: ResourceManagerLike | None) -> None:
        self.settings = settings
        self.resources = resources
        # (id(state), node_id) -> (state, when its first 429 arrived)
        self._limited_since: dict[tuple[int, str], tuple[ExecutionState, float]] = {}

    def delay(self, state: ExecutionState, node_id: str, error: BaseException) -> float | None:
        """Seconds to wait before running ``node_id`` again, or None to fail it now.

        Counts the attempt on ``state`` (``rate_limited`` or ``attempts``), which
        is where the next request reads its attempt number from.
        """
        if isinstance(error, RateLimitError):
            return self._rate_limit_delay(state, node_id, error)
        if isinstance(error, TransientError | TaskTimeoutError) or _is_transient_os_error(error):
            attempts = state.attempts.get(node_id, 0) + 1
            if attempts > self._retry_limit(state, node_id):
                return None
            state.attempts[node_id] = attempts
            return self._backoff(attempts)
        return None

    def _rate_limit_delay(
        self, state: ExecutionState, node_id: str, error: RateLimitError
    ) -> float | None:
        now = time.monotonic()
        key = (id(state), node_id)
        entry = self._limited_since.get(key)
        if entry is None:
            if len(self._limited_since) >= _PRUNE_AT:
                self._prune()
            entry = self._limited_since[key] = (state, now)
        waited = now - entry[1]
        requeues = state.rate_limited.get(node_id, 0)
        if not isinstance(error, EndpointBackoffError):
            requeues += 1
            state.rate_limited[node_id] = requeues
            if requeues > MAX_RATE_LIMIT_REQUEUES:
                del self._limited_since[key]
                error.add_note(f"gave up after {MAX_RATE_LIMIT_REQUEUES} requeues for 429s")
                return None
        budget = self.settings.max_rate_limit_wait
        if waited >= budget:
            del self._limited_since[key]
            error.add_note(
                f"gave up after waiting {waited:.1f}s for rate limits in total "
                f"(max_rate_limit_wait={budget:g}s)"
            )
            return None
        wait = error.retry_after if error.retry_after is not None else self._backoff(requeues)
        return min(wait, self.settings.max_retry_after, budget - waited)

    def _prune(self) -> None:
        self._limited_since = {
            key: entry
            for key, entry in self._limited_since.items()
            if key[1] in entry[0].in_progress
        }

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with half jitter, so retries of a burst spread out."""
        base: float = self.settings.task_retry_delay * 2.0 ** (max(attempt, 1) - 1)
        return min(base, MAX_BACKOFF) * (0.5 + random.random() / 2)

    def _retry_limit(self, state: ExecutionState, node_id: str) -> int:
        node = state.plan.nodes[node_id]
        if node.kind is NodeKind.LLM and self.resources is not None:
            limit = self.resources.retry_limit(node.module.alias)
            if limit is not None:
                return limit
        return self.settings.max_task_retries


def _is_transient_os_error(error: BaseException) -> bool:
    return isinstance(error, ConnectionError | TimeoutError) and not isinstance(error, PlaitError)
