"""Prompt optimization: losses, the textual backward pass, and optimizers.

The training loop mirrors PyTorch::

    pipeline.train()
    outputs = await pipeline(batch)                 # outputs carry forward records
    loss = await loss_fn(outputs, targets)          # a Feedback, with .score
    await loss.backward()                           # feedback reaches the Parameters
    await optimizer.step()                          # an LLM rewrites them

``fit`` runs that loop over a dataset with validation each epoch.

Optimizers that search instead of following feedback compare candidates with
an :class:`Evaluator` on a dev set: ``DemoOptimizer`` chooses the worked
examples a call shows (:class:`Demos`), ``ReflectiveOptimizer`` rewrites
instructions from traces (GEPA-style). See design_docs/optimization.md for
which to use when.
"""

from plait.demos import Demo, Demos
from plait.errors import BackwardError
from plait.execution.ask import TextLLM
from plait.feedback import (
    BackwardContext,
    BackwardResult,
    Feedback,
    FeedbackTarget,
    run_backward,
)
from plait.optimization.demo_optimizer import DemoCandidate, DemoOptimizer, DemoReport
from plait.optimization.evaluator import EvalResult, EvalRow, Evaluator, EvalUsage, Metric
from plait.optimization.losses.base import Loss, feedback
from plait.optimization.losses.composite import CompositeLoss
from plait.optimization.losses.judge import LLMJudge
from plait.optimization.losses.preference import LLMPreferenceLoss
from plait.optimization.losses.rubric import LLMRubricLoss
from plait.optimization.losses.verifier import VerifierLoss
from plait.optimization.optimizer import (
    FeedbackOptimizer,
    HistoryEntry,
    Optimizer,
    ParameterUpdate,
)
from plait.optimization.reflective import ReflectiveOptimizer, ReflectiveReport
from plait.optimization.search_state import Candidate, Proposal
from plait.optimization.trainer import EpochReport, TrainingReport, evaluate, fit

__all__ = [
    "BackwardContext",
    "BackwardError",
    "BackwardResult",
    "Candidate",
    "CompositeLoss",
    "Demo",
    "DemoCandidate",
    "DemoOptimizer",
    "DemoReport",
    "Demos",
    "EpochReport",
    "EvalResult",
    "EvalRow",
    "EvalUsage",
    "Evaluator",
    "Feedback",
    "FeedbackOptimizer",
    "FeedbackTarget",
    "HistoryEntry",
    "LLMJudge",
    "LLMPreferenceLoss",
    "LLMRubricLoss",
    "Loss",
    "Metric",
    "Optimizer",
    "ParameterUpdate",
    "Proposal",
    "ReflectiveOptimizer",
    "ReflectiveReport",
    "TextLLM",
    "TrainingReport",
    "VerifierLoss",
    "evaluate",
    "feedback",
    "fit",
    "run_backward",
]
