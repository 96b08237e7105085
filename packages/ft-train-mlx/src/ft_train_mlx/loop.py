"""The training loop: plain, top to bottom, the torch trainer's loop in MLX.

One optimizer step is `accumulation` micro-batches (the run's plan, `ft_train_core.plan`). Before any forward pass
the loop counts the trained tokens of the whole step (every micro-batch, every process); the
gradients of each micro-batch's summed loss are added up, summed over processes, and divided
by that count: accumulating 2 micro-batches of b rows is the same update as one batch of 2b.
Then: clip, check for NaN/inf, set the scheduled learning rate, step, and, between steps,
evaluate, checkpoint, and ask whether to stop.

Checkpoints are taken between optimizer steps only, so the saved accumulation micro-step is
always 0 and the data position is `step * accumulation` micro-batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from ft_config import TrainingConfig
from ft_data.batches import Batches, real_tokens
from ft_data.batches import target_count as trained_tokens
from ft_models.memory_watchdog import GATE, MemoryLimitReached
from ft_train_core.preference import preference_metrics
from ft_train_core.protocol import Sample
from ft_train_core.steps import Outcome, Steps
from ft_train_mlx.distributed import World
from ft_train_mlx.optim import learning_rate, set_learning_rate
from ft_train_mlx.packing import model_inputs, summed_loss
from ft_train_mlx.preference import Preference
from ft_train_mlx.state import LoopState, seed_micro_batch

Event = dict[str, Any]
SaveFn = Callable[[Path, LoopState, dict[str, int]], None]  # write weights + state into a folder


@dataclass
class Loop:
    """What the loop works with; `trainer.py` builds it from a job."""

    model: nn.Module
    optimizer: optim.Optimizer
    batches: Batches  # global batches (world_size * batch_size rows); each process takes its share
    settings: TrainingConfig
    total_steps: int
    total_micro_batches: int | None  # None: `max_steps` decides, the data cycles
    accumulation: int  # micro-batches per optimizer step (the run's BatchPlan)
    save: SaveFn
    checkpoints_dir: Path
    world: World = field(default_factory=World)
    eval_batches: Batches | None = None
    compile: bool = False
    # A preference objective (DPO, ORPO): its loss, gradients, pair counts and metrics in place
    # of the supervised loss's.
    preference: Preference | None = None
    # Answers to a few validation prompts after each evaluation (`ft_train_core.samples`);
    # None: none asked for, or a process that does not report.
    samples: Callable[[], list[Sample]] | None = None


def gradient_function(model: nn.Module, compiled: bool) -> Callable[..., Any]:
    """`grads(*model_inputs(batch)) -> (summed loss, gradients)`; with `compiled`, unpacked rows
    run an `mx.compile`d function. Its inputs and outputs are the model's state (value_and_grad
    swaps the weights in and out) and MLX's random state, which dropout draws from.

    Packed rows are not compiled: their examples' layout (`PackedSegments`) has shapes of its
    own in nearly every batch, so a compiled function would be traced again at almost every
    step, and its cache would grow for the whole run."""

    def plain(*arrays: mx.array) -> mx.array:
        return summed_loss(model, *arrays, None)

    plain_grad = nn.value_and_grad(model, plain)
    packed_grad = nn.value_and_grad(model, lambda *inputs: summed_loss(model, *inputs))
    if compiled:
        state = [model.state, mx.random.state]
        plain_grad = mx.compile(plain_grad, inputs=state, outputs=state)

    def grads(*inputs: Any) -> Any:
        *arrays, mask = inputs
        return plain_grad(*arrays) if mask is None else packed_grad(*arrays, mask)

    return grads


def run(
    loop: Loop, state: LoopState, emit: Callable[[Event], None], should_stop: Callable[[], bool]
) -> Outcome:
    """Train from `state` (fresh or restored) until the plan ends, early stopping, a stop
    request, or a NaN loss. Events go through `emit` on rank 0 only; the counting,
    checkpointing, evaluation and stopping are `ft_train_core.steps.Steps`'."""
    settings, world, model = loop.settings, loop.world, loop.model
    steps = Steps(
        state,
        settings,
        loop.batches,
        loop.checkpoints_dir,
        total_steps=loop.total_steps,
        total_micro_batches=loop.total_micro_batches,
        accumulation=loop.accumulation,
        say=emit if world.is_main else (lambda event: None),
        barrier=world.barrier,
    )
    grads_of = gradient_function(model, loop.compile)
    count = loop.preference.count if loop.preference is not None else trained_tokens
    micro_batches = loop.batches.iter_from(state.step * loop.accumulation)

    def checkpoint(is_best: bool = False) -> Path:
        def write(build: Path, position: dict[str, int]) -> None:
            loop.save(build, state, position)

        return steps.save(is_best, write if world.is_main else None)

    evaluate = (lambda: evaluate_scores(loop)) if loop.eval_batches is not None else None
    model.train()
    while steps.running():
        if world.agree(should_stop()):
            return steps.interrupted(checkpoint)

        # -- one optimizer step -------------------------------------------------------------
        step_started = time.perf_counter()
        first, last = steps.window()
        shards = [world.shard(next(micro_batches)) for _ in range(last - first)]
        # Normalise by the targets of the whole step, on every process, before any backward.
        targets = world.sum(float(sum(count(b) for b in shards)))
        tokens = int(world.sum(float(sum(real_tokens(b) for b in shards))))
        try:
            with GATE:  # the memory watchdog may interrupt here, and only here
                accumulated, loss_sum = _accumulate(
                    grads_of, shards, settings.seed, world, first, loop.preference
                )
        except MemoryLimitReached as stop:
            # The memory watchdog interrupted this step: its arrays die with the traceback's
            # frames, the weights are the last complete step's (micro-batches are seeded by
            # their index, so no RNG to rewind), so that step is saved and the run ends.
            stop.__traceback__ = None
            steps.ensure_saved(checkpoint)
            raise stop from None
        accumulated = world.sum_tree(accumulated)
        scale = 1.0 / max(targets, 1.0)
        accumulated = tree_map(lambda g, s=scale: g * s, accumulated)
        loss = world.sum(float(loss_sum.item())) / max(targets, 1.0)
        extra = _metrics(loop)

        if settings.max_grad_norm:
            accumulated, norm = optim.clip_grad_norm(accumulated, settings.max_grad_norm)
        else:
            norm = mx.sqrt(
                sum(mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(accumulated))
            )
        grad_norm = float(norm.item())
        if steps.non_finite(loss, grad_norm):
            return steps.finish("nan")
        rate = learning_rate(settings, state.step, loop.total_steps)
        set_learning_rate(loop.optimizer, rate)
        loop.optimizer.update(model, accumulated)
        mx.eval(model.parameters(), loop.optimizer.state)
        steps.stepped(
            loss=loss,
            learning_rate=rate,
            grad_norm=grad_norm,
            tokens=tokens,
            last=last,
            started=step_started,
            memory_bytes=int(mx.get_peak_memory()),
            extra=extra,
        )
        if steps.between_steps(last, evaluate, checkpoint, loop.samples):
            return steps.finish("early_stopping")
    return steps.end(checkpoint)


def _metrics(loop: Loop) -> dict[str, float] | None:
    """A preference objective's metrics over the pairs seen since the last call, all
    processes together; None for supervised runs."""
    if loop.preference is None:
        return None
    return preference_metrics([loop.world.sum(v) for v in loop.preference.totals.take()])


def _accumulate(
    grads_of: Callable[..., Any],
    shards: list[Any],
    seed: int,
    world: World,
    first: int,
    preference: Preference | None = None,
) -> tuple[Any, mx.array]:
    """Gradients summed over a step's micro-batches, and their summed loss. Its own frame,
    so an interrupted step's arrays go with it."""
    loss_sum = mx.array(0.0, dtype=mx.float32)
    accumulated: Any = None
    for index, batch in enumerate(shards):
        seed_micro_batch(seed + 1_000_003 * world.rank, first + index)
        if preference is not None:
            summed, grads = preference.grads(batch)
        else:
            summed, grads = grads_of(*model_inputs(batch))
        accumulated = grads if accumulated is None else tree_map(mx.add, accumulated, grads)
        loss_sum = loss_sum + summed
        # Evaluate now: one micro-batch's graph at a time, not the whole step's.
        mx.eval(accumulated, loss_sum)
    return accumulated, loss_sum


def evaluate_loss(loop: Loop) -> float:
    """Mean loss per target over the validation batches (all processes together)."""
    return evaluate_scores(loop)["eval_loss"]


def evaluate_scores(loop: Loop) -> dict[str, float]:
    """`eval_loss` over the validation batches, all processes together: the mean loss per
    target, or per pair for a preference objective, which adds its metrics."""
    assert loop.eval_batches is not None
    preference = loop.preference
    loop.model.eval()
    total, count = 0.0, 0
    if preference is not None:
        preference.totals.take()  # the evaluation's own pairs only
    for batch in loop.eval_batches.iter_from(0, epochs=1):
        shard = loop.world.shard(batch)
        if preference is not None:
            total += preference.loss(shard)
            count += preference.count(shard)
        else:
            total += float(summed_loss(loop.model, *model_inputs(shard)).item())
            count += trained_tokens(shard)
    loop.model.train()
    total, count = loop.world.sum(total), loop.world.sum(float(count))
    scores = {"eval_loss": total / count if count else float("nan")}
    scores.update(_metrics(loop) or {})
    return scores
