"""The run's schedule, number for number the same on every backend: the learning rate of each
step, how many optimizer steps and micro-batches a run has, where an epoch ends, when to
evaluate and save, and the best-checkpoint and patience bookkeeping of evaluations.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ft_config import TrainingConfig
from ft_train_core.state import LoopState

if TYPE_CHECKING:
    from ft_data.batches import Batches


def warmup_steps(settings: TrainingConfig, total_steps: int) -> int:
    """`warmup_steps` when set, else `warmup_ratio` of the steps (rounded up)."""
    if settings.warmup_steps is not None:
        return settings.warmup_steps
    return math.ceil(settings.warmup_ratio * total_steps)


def lr_factor(step: int, *, schedule: str, warmup: int, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based) as a share of the peak.

    Warmup rises linearly to the peak, reached at step `warmup`; then `constant` stays there,
    `linear` falls to 0 at `total`, `cosine` follows half a cosine to 0 at `total`.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {schedule!r}: constant, linear or cosine")


def run_length(
    batches: Batches, settings: TrainingConfig, accumulation: int | None = None
) -> tuple[int, int | None]:
    """(optimizer steps, micro-batches) of a run: `epochs` (a fraction takes that share of the
    last epoch's batches), unless `max_steps` is set (then the data cycles: None).
    `accumulation`: micro-batches per step (default: `gradient_accumulation_steps`)."""
    accumulation = accumulation or settings.gradient_accumulation_steps
    if settings.max_steps is not None:
        return settings.max_steps, None
    whole = int(settings.epochs)
    micro = batches.steps(whole) + round(
        (settings.epochs - whole) * batches.batches_in_epoch(whole)
    )
    if micro == 0:
        raise ValueError("the training data gives no batch: add rows or lower training.batch_size")
    return -(-micro // accumulation), micro


def epoch_progress(batches: Batches, micro_done: int) -> float:
    """The epoch reached after `micro_done` micro-batches, with its done share as the fraction."""
    epoch, index = batches.position(micro_done)
    return epoch + index / max(1, batches.batches_in_epoch(epoch))


def epoch_ended(batches: Batches, micro_done: int) -> bool:
    """True when the micro-batch before `micro_done` was the last of its epoch."""
    epoch, index = batches.position(micro_done - 1)
    return index == batches.batches_in_epoch(epoch) - 1


def due(every: int | None, step: int, epoch_ended: bool) -> bool:
    """Whether an every-N-steps action (`eval_every`, `save_every`) is due after `step`: every
    `every` steps, or at each epoch's end when `every` is unset."""
    return step % every == 0 if every else epoch_ended


def record_evaluation(state: LoopState, eval_loss: float, settings: Any) -> tuple[bool, bool]:
    """Count an evaluation at `state.step` into `state` (best metric and step, patience), as
    `training.early_stopping_threshold` and `_patience` say; `(is_best, stop_early)`."""
    is_best = (
        state.best_metric is None
        or eval_loss < state.best_metric - settings.early_stopping_threshold
    )
    if is_best:
        state.best_metric, state.best_step = eval_loss, state.step
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    patience = settings.early_stopping_patience
    return is_best, patience is not None and state.evals_without_improvement >= patience


def perplexity(loss: float) -> float:
    """`exp(loss)`, or infinity where that overflows."""
    return math.exp(loss) if loss < 700 else math.inf
