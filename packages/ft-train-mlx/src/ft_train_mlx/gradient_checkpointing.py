"""Gradient checkpointing for mlx-lm models: each transformer block recomputes its
activations in the backward pass instead of keeping them, trading compute for memory."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn


def checkpoint_layers(model: nn.Module) -> None:
    """Gradient checkpointing: each transformer block recomputes its activations in the
    backward pass (`mx.checkpoint`). Only these instances change (their class is swapped for a
    subclass), not every block of that type in the process.

    The recomputation runs the block's Python again, so dropout would draw new masks there and
    the gradient would not match the forward pass: each block seeds MLX's random state from a
    number drawn before it (itself seeded per micro-batch), and draws the same masks twice.
    """
    for layer in model.layers:
        base = type(layer)
        if getattr(base, "_ft_checkpointed", False):
            continue

        def call(
            self: nn.Module, x: mx.array, *args: Any, _base: type = base, **kwargs: Any
        ) -> Any:
            seed = int(mx.random.randint(0, 2**31 - 1, ()).item())

            def inner(params: Any, x: mx.array) -> mx.array:
                mx.random.seed(seed)
                self.update(params)
                return _base.__call__(self, x, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), x)

        layer.__class__ = type(
            f"Checkpointed{base.__name__}", (base,), {"__call__": call, "_ft_checkpointed": True}
        )
