"""Execution: scheduling traced graphs over many inputs under resource limits."""

from plait.execution.results import BatchResult
from plait.execution.runner import Call, run
from plait.execution.scheduler import Scheduler
from plait.execution.settings import ExecutionSettings
from plait.execution.state import ExecutionState

__all__ = ["BatchResult", "Call", "ExecutionSettings", "ExecutionState", "Scheduler", "run"]
