"""The training loop: plain, top to bottom.

One optimizer step is `accumulation` micro-batches (the run's plan, `ft_train_core.plan`). Before any forward pass the
loop counts the trained tokens of the whole step (every micro-batch, every process), and each
micro-batch's summed loss is divided by that count: accumulating 2 micro-batches of b rows is
the same update as one batch of 2b. Then: clip, step, schedule, and, between steps, evaluate,
checkpoint, and ask whether to stop.

Checkpoints are taken between optimizer steps only, so the saved accumulation micro-step is
always 0 and the data position is `step * accumulation` micro-batches.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ft_config import TrainingConfig
from ft_data.batches import Batch, Batches, real_tokens
from ft_models.memory_watchdog import GATE, MemoryLimitReached
from ft_train_core.preference import PreferenceTotals, preference_metrics
from ft_train_core.protocol import Sample
from ft_train_core.steps import Outcome, Steps
from ft_train_torch.device import peak_memory_bytes
from ft_train_torch.distributed import World, barrier, gradient_sync
from ft_train_torch.state import LoopState, rng_state, set_rng_state

Event = dict[str, Any]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]  # summed loss of a batch
CountFn = Callable[[Batch], int]  # trained targets of a batch
# Write weights + state into a folder (rank 0), given what `gather` collected from every process.
SaveFn = Callable[[Path, LoopState, dict[str, int], Any], None]
# Classification: (summed loss, correct predictions) of a batch, for `accuracy` in eval events.
ScoreFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, int]]


@dataclass
class Loop:
    """What the loop works with; `trainer.py` builds it from a job."""

    model: torch.nn.Module  # possibly DDP-wrapped: forward and backward go through it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Batches  # global batches (world_size * batch_size rows); each process takes its share
    settings: TrainingConfig
    total_steps: int
    total_micro_batches: int | None  # None: `max_steps` decides, the data cycles
    accumulation: int  # micro-batches per optimizer step (the run's BatchPlan)
    loss: LossFn
    count: CountFn
    save: SaveFn
    checkpoints_dir: Path
    device: torch.device
    world: World = field(default_factory=World)
    eval_batches: Batches | None = None
    scaler: torch.amp.GradScaler | None = None
    offload: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    score: ScoreFn | None = None  # set for classification: evaluation also reports accuracy
    # Called on every process before a checkpoint; its result goes to `save` (FSDP gathers the
    # sharded weights and optimizer state here). None: nothing to gather.
    gather: Callable[[], Any] | None = None
    # A preference objective's rewards, added up by `loss`: the step's and evaluation's metrics.
    metrics: PreferenceTotals | None = None
    # Answers to a few validation prompts after each evaluation (`ft_train_core.samples`);
    # None: none asked for, or a process that does not report.
    samples: Callable[[], list[Sample]] | None = None


def run(
    loop: Loop, state: LoopState, emit: Callable[[Event], None], should_stop: Callable[[], bool]
) -> Outcome:
    """Train from `state` (fresh or restored) until the plan ends, early stopping, a stop
    request, or a NaN loss. Events go through `emit` on rank 0 only; the counting,
    checkpointing, evaluation and stopping are `ft_train_core.steps.Steps`'."""
    world, device = loop.world, loop.device
    steps = Steps(
        state,
        loop.settings,
        loop.batches,
        loop.checkpoints_dir,
        total_steps=loop.total_steps,
        total_micro_batches=loop.total_micro_batches,
        accumulation=loop.accumulation,
        say=emit if world.is_main else (lambda event: None),
        barrier=lambda: barrier(world),
    )
    params = [p for p in loop.model.parameters() if p.requires_grad]
    micro_batches = loop.batches.iter_from(state.step * loop.accumulation)

    def checkpoint(is_best: bool = False) -> Path:
        gathered = loop.gather() if loop.gather is not None else None

        def write(build: Path, position: dict[str, int]) -> None:
            loop.save(build, state, position, gathered)

        return steps.save(is_best, write if world.is_main else None)

    evaluate = (lambda: evaluate_scores(loop)) if loop.eval_batches is not None else None
    while steps.running():
        if world.agree(should_stop(), device):
            return steps.interrupted(checkpoint)

        # -- one optimizer step -------------------------------------------------------------
        step_started = time.perf_counter()
        first, last = steps.window()
        shards = [world.shard(next(micro_batches)) for _ in range(last - first)]
        # Normalise by the targets of the whole step, on every process, before any backward.
        targets = world.sum(sum(loop.count(b) for b in shards), device)
        tokens = int(world.sum(sum(real_tokens(b) for b in shards), device))
        loop.model.train()
        rng = rng_state()
        try:
            with GATE:  # the memory watchdog may interrupt here, and only here
                loss_sum = _accumulate(loop, shards, targets)
        except MemoryLimitReached as stop:
            # The memory watchdog interrupted this step. Its activations die with the
            # traceback's frames; the weights are still those of the last complete step, so
            # that step is saved (with the RNG as it was before this one) and the run ends.
            stop.__traceback__ = None
            loop.optimizer.zero_grad(set_to_none=True)
            set_rng_state(*rng)
            steps.ensure_saved(checkpoint)
            raise stop from None
        loss = world.sum(float(loss_sum), device) / max(targets, 1.0)
        extra = _metrics(loop)

        if loop.scaler is not None:
            loop.scaler.unscale_(loop.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, loop.settings.max_grad_norm or math.inf)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        # With a grad scaler, an infinite norm is the scaler's business (it skips the step).
        if steps.non_finite(loss, grad_norm, check_grad_norm=loop.scaler is None):
            loop.optimizer.zero_grad(set_to_none=True)
            return steps.finish("nan")
        if loop.scaler is not None:
            loop.scaler.step(loop.optimizer)
            loop.scaler.update()
        else:
            loop.optimizer.step()
        learning_rate = loop.optimizer.param_groups[0]["lr"]
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
        steps.stepped(
            loss=loss,
            learning_rate=learning_rate,
            grad_norm=grad_norm,
            tokens=tokens,
            last=last,
            started=step_started,
            memory_bytes=peak_memory_bytes(device),
            extra=extra,
        )
        if steps.between_steps(last, evaluate, checkpoint, loop.samples):
            return steps.finish("early_stopping")
    return steps.end(checkpoint)


def _metrics(loop: Loop) -> dict[str, float] | None:
    """A preference objective's metrics over what `loss` saw since the last call, all
    processes together; None for other objectives."""
    if loop.metrics is None:
        return None
    return preference_metrics([loop.world.sum(v, loop.device) for v in loop.metrics.take()])


def _accumulate(loop: Loop, shards: list[Batch], targets: float) -> torch.Tensor:
    """Forward and backward every micro-batch of a step, gradients summed; the step's summed
    loss. Its own frame, so an interrupted step's graph goes with it."""
    world = loop.world
    loss_sum = torch.zeros((), dtype=torch.float64, device=loop.device)
    for index, batch in enumerate(shards):
        # DDP and FSDP reduce gradients on the last micro-batch only.
        with gradient_sync(loop.model, index == len(shards) - 1):
            with loop.offload():
                summed = loop.loss(loop.model, batch)
            # DDP and FSDP average gradients over processes; the sum is wanted.
            scaled = summed * (world.size / max(targets, 1.0))
            (loop.scaler.scale(scaled) if loop.scaler else scaled).backward()
        loss_sum += summed.detach().double()
        del summed, scaled  # free the graph before the next micro-batch
    return loss_sum


def evaluate(loop: Loop) -> float:
    """Mean loss per target over the validation batches (all processes together)."""
    return evaluate_scores(loop)["eval_loss"]


def evaluate_scores(loop: Loop) -> dict[str, float]:
    """`eval_loss` (mean loss per target) over the validation batches, all processes together,
    and, when the loop has a `score` function (classification), `accuracy`: the share of
    validation rows whose predicted class is their label."""
    assert loop.eval_batches is not None
    loop.model.eval()
    total, count, correct = 0.0, 0, 0
    if loop.metrics is not None:
        loop.metrics.take()  # the evaluation's own pairs only
    with torch.no_grad():
        for batch in loop.eval_batches.iter_from(0, epochs=1):
            shard = loop.world.shard(batch)
            if loop.score is not None:
                summed, right = loop.score(loop.model, shard)
                correct += right
            else:
                summed = loop.loss(loop.model, shard)
            total += float(summed)
            count += loop.count(shard)
    loop.model.train()
    total, count = loop.world.sum(total, loop.device), loop.world.sum(count, loop.device)
    scores = {"eval_loss": total / count if count else float("nan")}
    if loop.score is not None:
        right = loop.world.sum(correct, loop.device)
        scores["accuracy"] = right / count if count else float("nan")
    scores.update(_metrics(loop) or {})
    return scores
