"""Execution: scheduling traced graphs over many inputs under resource limits.

``CheckpointManager`` and ``ResponseCache`` are loaded on first use, so
programs that use neither never import SQLite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.execution.call import Call, run
from plait.execution.results import BatchResult
from plait.execution.scheduler import Scheduler
from plait.execution.settings import ExecutionSettings
from plait.execution.state import ExecutionState

if TYPE_CHECKING:
    from plait.storage.cache import ResponseCache
    from plait.storage.checkpoint_reader import CheckpointManager

__all__ = [
    "BatchResult",
    "Call",
    "CheckpointManager",
    "ExecutionSettings",
    "ExecutionState",
    "ResponseCache",
    "Scheduler",
    "run",
]


def __getattr__(name: str) -> Any:
    if name == "CheckpointManager":
        from plait.storage.checkpoint_reader import CheckpointManager

        return CheckpointManager
    if name == "ResponseCache":
        from plait.storage.cache import ResponseCache

        return ResponseCache
    raise AttributeError(f"module 'plait.execution' has no attribute {name!r}")
