"""Prompt optimization: losses, the textual backward pass, and optimizers.

The training loop mirrors PyTorch::

    pipeline.train()
    outputs = await pipeline(batch)                 # outputs carry forward records
    loss = await loss_fn(outputs, targets)          # a Feedback, with .score
    await loss.backward()                           # feedback reaches the Parameters
    await optimizer.step()                          # an LLM rewrites them

``fit`` runs that loop over a dataset with validation each epoch.
"""

from plait.errors import BackwardError
from plait.execution.ask import TextLLM
from plait.feedback import (
    BackwardContext,
    BackwardResult,
    Feedback,
    FeedbackTarget,
    run_backward,
)
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
from plait.optimization.trainer import EpochReport, TrainingReport, evaluate, fit

__all__ = [
    "BackwardContext",
    "BackwardError",
    "BackwardResult",
    "CompositeLoss",
    "EpochReport",
    "Feedback",
    "FeedbackOptimizer",
    "FeedbackTarget",
    "HistoryEntry",
    "LLMJudge",
    "LLMPreferenceLoss",
    "LLMRubricLoss",
    "Loss",
    "Optimizer",
    "ParameterUpdate",
    "TextLLM",
    "TrainingReport",
    "VerifierLoss",
    "evaluate",
    "feedback",
    "fit",
    "run_backward",
]
