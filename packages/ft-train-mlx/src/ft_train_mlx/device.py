"""Where MLX runs and in which precision: the device (`gpu`, Metal or CUDA, or `cpu`), the
compute precision, the dtype the base weights load in, and the process' memory limits.

`precision: auto` follows ft-models' one rule (`ft_models.device.pick_precision`), as the
torch trainer does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mlx.core as mx

GIB = 1 << 30
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def gpu_available() -> bool:
    return bool(mx.metal.is_available()) or bool(
        getattr(mx, "cuda", None) and mx.cuda.is_available()
    )


def pick_device(requested: str) -> str:
    """`gpu` (Metal, or CUDA) or `cpu` for `resources.device`."""
    wanted = (requested or "auto").lower()
    if wanted in ("auto",):
        return "gpu" if gpu_available() else "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted in ("gpu", "mps", "metal", "cuda"):
        if not gpu_available():
            raise RuntimeError(
                f"resources.device: {requested}, but MLX sees no GPU on this machine: set "
                "resources.device: cpu (or auto)"
            )
        return "gpu"
    raise ValueError(f"resources.device: {requested!r} is not an MLX device: auto, gpu or cpu")


def device_name(device: str) -> str:
    """`mlx` (the GPU) or `mlx-cpu`: the name a `Placement` and the run's plan
    (`ft_train_core.plan`) give MLX's `device`."""
    return "mlx" if device == "gpu" else "mlx-cpu"


def resolve_precision(requested: str, device: str) -> str:
    """`training.precision` on MLX's `device` (`gpu`/`cpu`), by ft-models' one rule."""
    from ft_models.device import pick_precision

    return pick_precision(device_name(device), requested).dtype


def load_dtype(model_dtype: str, precision: str) -> str:
    """The dtype of the base weights: `model.dtype` when set, else the compute precision's."""
    return model_dtype if model_dtype != "auto" else DTYPES[precision]


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """MLX's default device set to `device` (`gpu`/`cpu`) while the context is open."""
    before = mx.default_device()
    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    try:
        yield
    finally:
        mx.set_default_device(before)


@contextlib.contextmanager
def memory_limit(max_memory_gb: float | None) -> Iterator[None]:
    """`resources.max_memory_gb` as MLX's memory limit (allocations above it wait for memory to
    be freed, or fail) and its cache limit (a quarter of it: freed buffers kept for reuse)."""
    if not max_memory_gb:
        yield
        return
    limit = int(max_memory_gb * GIB)
    old_limit = mx.set_memory_limit(limit)
    old_cache = mx.set_cache_limit(limit // 4)
    try:
        yield
    finally:
        mx.set_memory_limit(old_limit)
        mx.set_cache_limit(old_cache)
