"""Optimizers and learning-rate schedules, from the `training` section."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ft_config import TrainingConfig
from ft_train_core.schedule import lr_factor, warmup_steps


def build_optimizer(
    params: Iterable[torch.nn.Parameter], settings: TrainingConfig
) -> torch.optim.Optimizer:
    """The optimizer of `training.optimizer` over `params` (the trainable ones).

    `adamw` and `adam` are torch's, with bias correction (mlx-lm's Adam skips it by default, so
    MLX runs set it explicitly to match). `adam` adds weight decay to the gradient (L2),
    `adamw` decays the weights directly. `sgd` uses momentum `adam_beta1`. `adafactor` is
    transformers' with a fixed learning rate (ft's schedule drives it).
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: check method.target_modules")
    lr, decay = settings.learning_rate, settings.weight_decay
    betas = (settings.adam_beta1, settings.adam_beta2)
    # foreach=False: one implementation everywhere, so CPU runs compare bit for bit.
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=betas, eps=settings.adam_epsilon, weight_decay=decay, foreach=False
        )
    if settings.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=betas, eps=settings.adam_epsilon, weight_decay=decay, foreach=False
        )
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=settings.adam_beta1, weight_decay=decay, foreach=False
        )
    if settings.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=lr,
            weight_decay=decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}: adamw, adam, sgd or adafactor")


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_factor`; its state (a few numbers) is saved as JSON."""
    warmup = warmup_steps(settings, total_steps)
    schedule = settings.lr_scheduler

    def factor(step: int) -> float:
        return lr_factor(step, schedule=schedule, warmup=warmup, total=total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
