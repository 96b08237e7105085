"""Optimizers and learning-rate schedules, from the `training` section, as the torch trainer
has them.

`adamw` is `mlx.optimizers.AdamW(bias_correction=True)`: MLX's default skips the bias
correction (mlx-lm's runs do), torch always applies it. With it MLX computes
`w -= lr / (1 - b1^t) * m / (sqrt(v) * rsqrt(1 - b2^t) + eps)` after `w *= 1 - lr * decay`,
which is torch.optim.AdamW's update, term for term (tests/test_optim.py checks it against
torch). `adam` adds the weight decay to the gradient (L2), as torch.optim.Adam does. The
schedule sets the learning rate before every step: the loop owns it, so it is one number in
the checkpoint.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.optimizers as optim

from ft_config import TrainingConfig
from ft_train_core.schedule import lr_factor, warmup_steps


class AdamL2(optim.Adam):
    """torch.optim.Adam's weight decay: `decay * w` added to the gradient."""

    def __init__(self, weight_decay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weight_decay = weight_decay

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        if self.weight_decay:
            gradient = gradient + self.weight_decay * parameter
        return super().apply_single(gradient, parameter, state)


def build_optimizer(settings: TrainingConfig) -> optim.Optimizer:
    """The optimizer of `training.optimizer`; its learning rate is set by the loop each step."""
    lr, decay = settings.learning_rate, settings.weight_decay
    betas = [settings.adam_beta1, settings.adam_beta2]
    if settings.optimizer == "adamw":
        return optim.AdamW(
            learning_rate=lr,
            betas=betas,
            eps=settings.adam_epsilon,
            weight_decay=decay,
            bias_correction=True,
        )
    if settings.optimizer == "adam":
        return AdamL2(
            decay, learning_rate=lr, betas=betas, eps=settings.adam_epsilon, bias_correction=True
        )
    if settings.optimizer == "sgd":
        return optim.SGD(learning_rate=lr, momentum=settings.adam_beta1, weight_decay=decay)
    if settings.optimizer == "adafactor":
        return optim.Adafactor(
            learning_rate=lr, relative_step=False, scale_parameter=False, warmup_init=False
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}: adamw, adam, sgd or adafactor")


def set_learning_rate(optimizer: optim.Optimizer, value: float) -> None:
    optimizer.learning_rate = mx.array(value, dtype=mx.float32)


def learning_rate(settings: TrainingConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based)."""
    factor = lr_factor(
        step,
        schedule=settings.lr_scheduler,
        warmup=warmup_steps(settings, total_steps),
        total=total_steps,
    )
    return settings.learning_rate * factor
