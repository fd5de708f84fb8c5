"""The training loop, written once: mini-batches, validation per epoch, best state kept.

The recipe it follows is the one to write by hand when more control is
needed::

    module.train()
    optimizer.zero_feedback()
    outputs = await module.batch(inputs)           # training-mode outputs carry records
    loss = await loss_fn(outputs, targets)         # one feedback for the mini-batch
    await loss.backward()                          # feedback accumulates on Parameters
    await optimizer.step()                         # rewrite them, upstream first
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from plait.errors import ConfigError
from plait.execution.settings import ExecutionSettings
from plait.module import Module
from plait.optimization.losses.base import Loss
from plait.optimization.optimizer import Optimizer, ParameterUpdate
from plait.values import wrap

Example = tuple[Any, Any]
"""An (input, target) pair; a tuple input is unpacked as positional arguments."""


@dataclass(slots=True)
class EpochReport:
    """Scores after one epoch (epoch 0 is the untrained baseline)."""

    epoch: int
    train_score: float | None
    val_score: float | None
    updates: list[ParameterUpdate] = field(default_factory=list)


@dataclass(slots=True)
class TrainingReport:
    """Every epoch's scores, and the best validation state (loaded into the module)."""

    epochs: list[EpochReport]
    best_epoch: int
    best_score: float | None
    best_state: dict[str, str]

    @property
    def val_scores(self) -> list[float | None]:
        return [epoch.val_score for epoch in self.epochs]


async def evaluate(module: Module, loss_fn: Loss, examples: Sequence[Example]) -> float | None:
    """The mean score of ``module`` on ``examples`` in eval mode (nothing recorded)."""
    if not examples:
        return None
    was_training = module.training
    module.eval()
    # The forward's resources go with the outputs, so an LLM loss can use them.
    resources = module.resolved_settings().resources
    try:
        outputs = await module.batch([inputs for inputs, _ in examples])
        judged = [wrap(output) for output in outputs]
        with ExecutionSettings(resources=resources) if resources is not None else nullcontext():
            loss = await loss_fn(judged, [target for _, target in examples])
    finally:
        module.train(was_training)
    score = loss.score
    return None if score is None else float(score)


async def fit(
    module: Module,
    loss_fn: Loss,
    optimizer: Optimizer,
    train_set: Sequence[Example],
    val_set: Sequence[Example] = (),
    *,
    epochs: int = 3,
    batch_size: int = 4,
    shuffle: bool = True,
    seed: int = 0,
    keep_best: bool = True,
    on_epoch: Callable[[EpochReport], Any] | None = None,
    accept_worse: bool = False,
) -> TrainingReport:
    """Train ``module``'s parameters on ``train_set`` and keep the best validation state.

    Each epoch runs the recipe in this module's docstring once per
    mini-batch, then scores ``val_set`` (or, without one, the training set).
    The untrained module is scored first, as epoch 0. With ``keep_best``,
    the state that scored best is loaded back at the end (ties keep the
    earlier, simpler state). ``on_epoch`` is called with each epoch's report.

    With a ``val_set``, a step that changed anything is scored on it at once,
    and undone if it scores worse than the state before it (its updates are
    reported with ``applied=False``), so no step makes the module worse on
    the dev set; an epoch's validation score is then that of the state it
    kept. ``accept_worse=True`` keeps every step instead.
    """
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"fit needs epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    if not train_set:
        raise ConfigError("fit needs a non-empty train_set")
    scored = val_set or train_set
    rng = random.Random(seed)
    order = list(train_set)
    reports = [EpochReport(0, None, await evaluate(module, loss_fn, scored))]
    if on_epoch is not None:
        on_epoch(reports[0])
    best = (reports[0].val_score, 0, module.state_dict())
    guarded = bool(val_set) and not accept_worse
    current = reports[0].val_score
    for epoch in range(1, epochs + 1):
        if shuffle:
            rng.shuffle(order)
        batch_scores: list[float] = []
        updates: list[ParameterUpdate] = []
        for start in range(0, len(order), batch_size):
            before = module.state_dict()
            score, applied = await _train_batch(
                module, loss_fn, optimizer, order[start : start + batch_size]
            )
            if score is not None:
                batch_scores.append(score)
            if guarded and any(update.applied for update in applied):
                after = await evaluate(module, loss_fn, val_set)
                if _worse(after, current):
                    module.load_state_dict(before)
                    applied = [_undone(update, after, current) for update in applied]
                else:
                    current = after
            updates += applied
        train_score = sum(batch_scores) / len(batch_scores) if batch_scores else None
        val_score = current if guarded else await evaluate(module, loss_fn, scored)
        report = EpochReport(epoch, train_score, val_score, updates)
        reports.append(report)
        if on_epoch is not None:
            on_epoch(report)
        if _better(report.val_score, best[0]):
            best = (report.val_score, epoch, module.state_dict())
    module.eval()
    if keep_best:
        module.load_state_dict(best[2])
    return TrainingReport(reports, best[1], best[0], best[2])


async def _train_batch(
    module: Module, loss_fn: Loss, optimizer: Optimizer, batch: Sequence[Example]
) -> tuple[float | None, list[ParameterUpdate]]:
    module.train()
    optimizer.zero_feedback()
    outputs = await module.batch([inputs for inputs, _ in batch])
    loss = await loss_fn(outputs, [target for _, target in batch])
    await loss.backward()
    updates = await optimizer.step()
    score = loss.score
    return (None if score is None else float(score)), updates


def _worse(score: float | None, current: float | None) -> bool:
    """A dev score below the current one (unscored losses cannot tell, so never worse)."""
    if current is None:
        return False
    return score is None or score < current


def _undone(update: ParameterUpdate, score: float | None, current: float | None) -> ParameterUpdate:
    if not update.applied:
        return update
    shown = "n/a" if score is None else f"{score:.2f}"
    reason = f"rejected: the dev score fell to {shown} from {current:.2f}"
    return replace(update, applied=False, reason=reason)


def _better(score: float | None, best: float | None) -> bool:
    if score is None:
        return False
    return best is None or score > best
