"""plait: the PyTorch programming model for LLM pipelines.

Write ``Module`` classes whose ``forward`` composes ``LLMInference`` calls in
plain Python; plait traces them into a graph, runs it concurrently against
rate-limited endpoints, and can improve prompt ``Parameter`` s from feedback.
"""

from plait.containers import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from plait.execution.call import run
from plait.execution.results import BatchResult
from plait.execution.settings import ExecutionSettings
from plait.inference import LLMInference
from plait.module import Module
from plait.parameter import Parameter
from plait.tracing.tracer import trace
from plait.values import Value, ValueKind

__all__ = [
    "BatchResult",
    "ExecutionSettings",
    "LLMInference",
    "Module",
    "ModuleDict",
    "ModuleList",
    "Parameter",
    "ParameterDict",
    "ParameterList",
    "Sequential",
    "Value",
    "ValueKind",
    "run",
    "trace",
]
