"""How much arithmetic a training run is, and how fast this machine does it: the time half of a
run's plan (`ft_models.memory` is the memory half).

`training_flops_per_token` counts the matrix multiplications of one token's forward and
backward pass, from the model's shape (the rest of the work, norms and activations, is small
next to them). `matmul_speed` times a matrix product on the device the run will use, with the
backend's own library, in a fraction of a second. Their quotient, with the share of that speed
a training step reaches (`TRAINING_EFFICIENCY`, measured), is the estimate `ft train` prints
before it starts; the progress bar's ETA replaces it after the first steps.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

from ft_models.shape import ModelShape

TRAINING_EFFICIENCY = 0.4
"""The share of `matmul_speed` a training step reaches. Measured on SmolLM2-135M LoRA steps on
2-core x86 CPUs (docs/training.md, 'The plan'): 0.35 to 0.6; the lower half is used, so the
printed time errs long."""


def training_flops_per_token(
    shape: ModelShape,
    *,
    method: str = "lora",
    target_fraction: float = 1.0,
    gradient_checkpointing: bool = False,
    lora_rank: int = 16,
    lora_targets: Sequence[str] = (),
    attention_span: int = 512,
) -> float:
    """Floating-point operations one token costs in a training step (forward and backward).

    A matrix of n weights costs 2n per token forward and 2n backward for the input's gradient;
    a trained matrix (full fine-tuning) another 2n for its own gradient. LoRA adds its two
    rank-r matrices, trained. Attention costs about 4 x span x width per token and layer
    forward (scores and the weighted sum, causal: half of a span of `attention_span`), twice
    that backward. The output layer runs on the trained positions only (`target_fraction` of
    the tokens). Gradient checkpointing runs each block's forward twice.
    """
    linear = shape.linear_layer_shapes()
    block = sum(i * o for i, o in linear.values())
    trained_block = block if method == "full" else 0
    adapters = sum(lora_rank * (linear[t][0] + linear[t][1]) for t in lora_targets)
    width = shape.num_heads * shape.head_dim
    attention = 4 * (attention_span / 2) * width
    forward = 2 * block + 2 * adapters + attention
    backward = 2 * block + 2 * trained_block + 4 * adapters + 2 * attention
    per_layer = forward * (2 if gradient_checkpointing else 1) + backward
    head = shape.vocab_size * shape.hidden_size
    head_flops = target_fraction * head * (2 + 2 + (2 if method == "full" else 0))
    return shape.num_layers * per_layer + head_flops


@functools.cache
def matmul_speed(backend: str, device: str = "cpu", dtype: str = "float32") -> float:
    """Floating-point operations per second of a 1024 x 1024 matrix product on `device`, with
    `backend`'s library (`torch` or `mlx`), in `dtype`; takes about 0.1-0.3 s the first time
    (1-2 s with mlx[cpu]'s reference BLAS), and is remembered for the process after that.
    Raises ImportError when the backend is not installed."""
    if backend == "mlx":
        return _mlx_speed(device, dtype)
    return _torch_speed(device, dtype)


def _torch_speed(device: str, dtype: str) -> float:
    import torch

    kind = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    a = torch.randn(1024, 1024, device=device).to(kind)
    b = torch.randn(1024, 1024, device=device).to(kind)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    torch.matmul(a, b)  # warm-up: the first call chooses kernels
    sync()
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < 0.1 or runs < 2:
        torch.matmul(a, b)
        sync()
        runs += 1
    return runs * 2 * 1024**3 / elapsed


def _mlx_speed(device: str, dtype: str) -> float:
    import mlx.core as mx

    kind = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[dtype]
    where = mx.gpu if device == "gpu" else mx.cpu
    a = mx.random.normal((1024, 1024)).astype(kind)
    b = mx.random.normal((1024, 1024)).astype(kind)
    mx.eval(mx.matmul(a, b, stream=where))
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < 0.1 or runs < 2:
        mx.eval(mx.matmul(a, b, stream=where))
        runs += 1
    return runs * 2 * 1024**3 / elapsed
