"""Where the model runs and in which precision: the device, the dtype the base weights load in,
the autocast context of the forward pass and the fp16 loss scaler.

`precision: auto` follows ft-models' one rule (`ft_models.device.pick_precision`): bf16 where
the device computes it natively (CUDA with compute capability 8.0+, MPS on macOS 14+, a CPU with
AVX512-BF16 or AMX), else fp32. The MLX trainer asks the same function. A CPU run in bf16 is
still deterministic (a resumed run ends bit-identical), but its losses differ from fp32's in
the third digit: ask for `precision: fp32` where the numbers must be float32's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch


def pick_device(setting: str) -> torch.device:
    """The device for `resources.device` (`auto` is cuda > mps > cpu), chosen by ft-models so
    every part of ft agrees; a device this machine lacks raises ft-models' DeviceError."""
    from ft_models.device import pick_device as choose

    choice = choose(setting)
    device = torch.device(choice.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_precision(setting: str, device: torch.device) -> str:
    """`fp32`, `bf16` or `fp16` for `training.precision` on `device` (see the module docstring)."""
    from ft_models.device import pick_precision

    if setting == "auto":
        return pick_precision(str(device) if device.type == "cuda" else device.type).dtype
    if setting == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision: fp16 needs a CUDA GPU (it trains with a loss scaler), and this run is on {device.type}: "
            "use precision: bf16 or fp32"
        )
    if setting == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "precision: bf16 is not supported by this GPU: use precision: fp16 or fp32"
        )
    return setting


def device_name(device: torch.device) -> str:
    """`cuda:N` for a CUDA device, else the device type (`cpu`, `mps`): the name a `Placement`
    and the run's plan (`ft_train_core.plan`) give it."""
    return str(device) if device.type == "cuda" else device.type


def load_dtype(setting: str, device: torch.device, *, full: bool) -> torch.dtype:
    """The dtype the base weights load in (`model.dtype`).

    `auto`: bfloat16 on a bf16-capable GPU for adapter methods (the base is frozen, so bf16 only
    halves its memory); float32 for full fine-tuning, whose weights are the optimizer's master
    copy, and everywhere on the CPU.
    """
    if setting != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            setting
        ]
    if not full and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast(precision: str, device: torch.device) -> Callable[[], AbstractContextManager[object]]:
    """A factory of the context the forward pass runs in."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (whose small gradients underflow without one); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory so far: allocated GPU memory on CUDA, the process' peak RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB
