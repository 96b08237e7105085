"""Everything a checkpoint holds besides the weights, as safetensors and JSON (no pickle).

Files in a checkpoint folder, next to the weights (the torch trainer's names and meaning):

- `optimizer.safetensors`: the optimizer's whole state tree flattened (`step`,
  `learning_rate`, and each parameter's moments, e.g. `model.layers.0.self_attn.q_proj.lora_a.m`);
- `trainer_state.json`: the step, the data position, the accumulation micro-step, the best
  evaluation and patience counter, the schedule position, numpy's and Python's RNG, and the
  fingerprint of the config, model and data the run started with.

MLX's random state (dropout): MLX has no call to set its global key back, so the loop seeds it
from `(seed, micro-batch index)` before every micro-batch (`seed_micro_batch`). The stream a
step draws from is then a function of the step alone, and a resumed run draws what the
uninterrupted run drew, with nothing to restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ft_train_core.state import (
    LoopState,
    host_rng_state,
    read_trainer_state,
    set_host_rng_state,
    write_trainer_state,
)

OPTIMIZER_TENSORS = "optimizer.safetensors"


def seed_micro_batch(seed: int, micro_batch: int) -> None:
    """Seed MLX's global random state for global micro-batch `micro_batch` of a run."""
    key = np.random.SeedSequence([seed % 2**63, micro_batch]).generate_state(1, dtype=np.uint64)
    mx.random.seed(int(key[0]))


# -- optimizer ------------------------------------------------------------------------------------


def save_optimizer(optimizer: optim.Optimizer, folder: Path) -> None:
    tensors = dict(tree_flatten(optimizer.state))
    mx.eval(tensors)
    mx.save_safetensors(str(folder / OPTIMIZER_TENSORS), tensors)


def load_optimizer(optimizer: optim.Optimizer, model: nn.Module, folder: Path) -> None:
    """Restore what `save_optimizer` wrote into `optimizer` (for the same trainable weights)."""
    tensors = mx.load(str(folder / OPTIMIZER_TENSORS))
    optimizer.init(model.trainable_parameters())
    expected = {name for name, _ in tree_flatten(optimizer.state)}
    if expected != set(tensors):
        missing = sorted(expected - set(tensors))[:3]
        extra = sorted(set(tensors) - expected)[:3]
        raise ValueError(
            f"{folder / OPTIMIZER_TENSORS} does not fit this run's trainable weights "
            f"(missing {missing}, unexpected {extra}): resume with the method and settings the "
            "checkpoint was trained with"
        )
    optimizer.state = tree_unflatten(list(tensors.items()))
    optimizer.init(model.trainable_parameters())  # marks it initialized; adds nothing


# -- the whole training state ---------------------------------------------------------------------


def save_training_state(
    folder: Path,
    *,
    loop: LoopState,
    optimizer: optim.Optimizer,
    data_position: dict[str, int],
    fingerprint: dict[str, Any],
) -> None:
    """Write optimizer and trainer state into the checkpoint folder being built (the run's
    batches are in `fingerprint["batch_plan"]`, which a resumed run reuses)."""
    save_optimizer(optimizer, folder)
    write_trainer_state(
        folder,
        loop=loop,
        data_position=data_position,
        fingerprint=fingerprint,
        scheduler={"last_epoch": loop.step},  # the schedule is a function of the step
        rng={
            **host_rng_state(),
            "mlx": "seeded per micro-batch from (training.seed, micro-batch index)",
        },
    )


def load_training_state(folder: Path, *, optimizer: optim.Optimizer, model: nn.Module) -> LoopState:
    """Restore optimizer and host RNGs from `folder`; return the loop state."""
    doc = read_trainer_state(folder)
    load_optimizer(optimizer, model, folder)
    set_host_rng_state(doc["rng"])
    return LoopState(**doc["loop"])
