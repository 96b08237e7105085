"""Which backend, device and dtype a job runs on, and how much memory this machine has.

Every choice comes with its reason, in words a caller prints (`ft train` says "backend: mlx
(Apple Silicon and mlx is installed)"). A request that cannot be honoured is an error that
says what was asked, what this machine has, and what to change; never a silent fallback.

torch and mlx are imported inside the functions that need them: this module is imported by
`ft --help`, `ft doctor` and the catalog, which must stay fast and work without either backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from typing import Any

import attrs

from ft_models.ram import ram as read_ram

TORCH_MISSING = 'PyTorch is not installed: pip install "ft-models[torch]"'
MLX_MISSING = 'MLX is not installed: pip install "ft-models[mlx]"'

BACKENDS = ("auto", "torch", "mlx")
DTYPES = ("float32", "bfloat16", "float16")
# train.yml says `precision: bf16`; `model.dtype: bfloat16`. Both spellings are accepted.
DTYPE_ALIASES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
}


class DeviceError(ValueError):
    """A requested backend, device or dtype this machine cannot provide."""


@attrs.frozen
class BackendChoice:
    """The training backend (`torch` or `mlx`) and why it was picked."""

    backend: str
    reason: str


@attrs.frozen
class DeviceChoice:
    """A torch device string (`cuda`, `cuda:1`, `mps`, `cpu`) and why it was picked."""

    device: str
    reason: str


@attrs.frozen
class DtypeChoice:
    """A dtype name (`float32`, `bfloat16`, `float16`) and why it was picked."""

    dtype: str
    reason: str


@attrs.frozen
class GpuMemory:
    """One CUDA device's memory, in bytes."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


@attrs.frozen
class MemoryInfo:
    """This machine's memory, in bytes.

    `total_bytes`/`available_bytes` are RAM (capped by a cgroup limit when the process runs in
    a container). On Apple Silicon the GPU shares that RAM: `unified` is True, and
    `metal_working_set_bytes` is the most Metal recommends one process keep wired (from MLX,
    when it is installed). `gpus` lists CUDA devices (empty without torch or a GPU).
    `ram_source` says what set `available_bytes` ("MemAvailable", "cgroup v1 limit 8.0 GB"),
    for messages: see `ft_models.ram`.
    """

    total_bytes: int
    available_bytes: int
    unified: bool = False
    metal_working_set_bytes: int | None = None
    gpus: tuple[GpuMemory, ...] = ()
    ram_source: str = ""

    def for_device(self, device: str) -> int:
        """The memory a training job on `device` (`cpu`, `mps`, `mlx`, `cuda`, `cuda:N`) can
        use: the GPU's total memory for CUDA, Metal's working set (or available RAM) for
        unified memory, else available RAM."""
        if device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            for gpu in self.gpus:
                if gpu.index == index:
                    return gpu.total_bytes
            raise DeviceError(f"no CUDA device {index} here (found {len(self.gpus)})")
        if device in ("mps", "mlx") and self.metal_working_set_bytes:
            return min(self.metal_working_set_bytes, self.available_bytes)
        return self.available_bytes


def is_apple_silicon() -> bool:
    """True on macOS on an Apple (arm64) chip."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def _mlx_importable() -> bool:
    # A real import, not find_spec: a half-installed MLX (the Linux wheel without `mlx[cpu]`)
    # has a package but no working core. Importing mlx.core is fast (no Metal work happens).
    try:
        importlib.import_module("mlx.core")
    except ImportError:
        return False
    return True


def _torch_installed() -> bool:
    # find_spec, not import: importing torch takes seconds; pick_device imports it when needed.
    return importlib.util.find_spec("torch") is not None


def import_torch() -> Any:
    """`import torch`, or the ImportError that says how to install it."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(TORCH_MISSING) from error
    return torch


def import_mlx() -> Any:
    """`import mlx.core`, or the ImportError that says how to install it."""
    try:
        import mlx.core as mx
    except ImportError as error:
        raise ImportError(MLX_MISSING) from error
    return mx


def pick_backend(requested: str = "auto") -> BackendChoice:
    """The backend for `training.backend: requested`.

    `auto` picks MLX on Apple Silicon when mlx imports, else torch when it is installed, else
    MLX (on Linux it runs on the CPU, slowly). `torch`/`mlx` are honoured when installed.
    Raises ImportError (with the pip command) when the backend asked for, or any backend for
    `auto`, is missing; DeviceError for an unknown name.
    """
    if requested not in BACKENDS:
        raise DeviceError(f"training.backend is {requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested == "torch":
        if not _torch_installed():
            raise ImportError(TORCH_MISSING)
        return BackendChoice("torch", "training.backend is 'torch'")
    if requested == "mlx":
        if not _mlx_importable():
            raise ImportError(MLX_MISSING)
        where = "Metal GPU" if is_apple_silicon() else "CPU (slow: MLX is fast on Apple Silicon)"
        return BackendChoice("mlx", f"training.backend is 'mlx'; MLX runs on the {where}")
    if is_apple_silicon():
        if _mlx_importable():
            return BackendChoice("mlx", "auto: Apple Silicon, and mlx is installed")
        if _torch_installed():
            return BackendChoice(
                "torch",
                'auto: Apple Silicon but mlx is not installed, so torch (MPS); pip install "ft-models[mlx]" for MLX',
            )
    elif _torch_installed():
        return BackendChoice(
            "torch", f"auto: not Apple Silicon ({sys.platform} {platform.machine()}), so torch"
        )
    elif _mlx_importable():
        return BackendChoice(
            "mlx", "auto: torch is not installed; MLX runs on the CPU here (slowly)"
        )
    raise ImportError(
        'no training backend is installed: pip install "ft-models[torch]" '
        '(or "ft-models[mlx]" on Apple Silicon)'
    )


def pick_device(requested: str = "auto") -> DeviceChoice:
    """The torch device for `resources.device: requested`.

    `auto` picks cuda > mps > cpu. `cuda`, `cuda:N`, `mps` and `cpu` are honoured when this
    machine has them; otherwise DeviceError says what is missing and what to set instead.
    Raises ImportError when torch is not installed.
    """
    torch = import_torch()
    cuda = torch.cuda.is_available()
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    if requested == "auto":
        if cuda:
            name = torch.cuda.get_device_name(0)
            count = torch.cuda.device_count()
            more = f" (1 of {count}; DDP uses the others)" if count > 1 else ""
            return DeviceChoice("cuda", f"auto: CUDA is available: {name}{more}")
        if mps:
            return DeviceChoice("mps", "auto: no CUDA; Apple GPU through MPS")
        why = _no_gpu_reason(torch)
        return DeviceChoice("cpu", f"auto: no CUDA or MPS ({why}), so the CPU")
    if requested == "cpu":
        return DeviceChoice("cpu", "resources.device is 'cpu'")
    if requested == "mps":
        if not mps:
            raise DeviceError(
                "resources.device is 'mps' but torch.backends.mps.is_available() is False here: "
                "MPS needs macOS 12.3+ on Apple Silicon. Set resources.device to auto or cpu."
            )
        return DeviceChoice("mps", "resources.device is 'mps'")
    if requested == "cuda" or requested.startswith("cuda:"):
        if not cuda:
            raise DeviceError(
                f"resources.device is {requested!r} but torch.cuda.is_available() is False here: "
                f"{_no_gpu_reason(torch)}. Set resources.device to auto or cpu."
            )
        index = requested.partition(":")[2]
        count = torch.cuda.device_count()
        if index and not (index.isdigit() and int(index) < count):
            raise DeviceError(
                f"resources.device is {requested!r} but this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
        name = torch.cuda.get_device_name(int(index or 0))
        return DeviceChoice(requested, f"resources.device is {requested!r}: {name}")
    raise DeviceError(f"resources.device is {requested!r}: choose auto, cpu, cuda, cuda:N or mps")


def _no_gpu_reason(torch: Any) -> str:
    cuda_build = getattr(torch.version, "cuda", None)
    if cuda_build:
        return f"this torch is a CUDA {cuda_build} build but finds no GPU or driver"
    return f"this torch {torch.__version__} is a CPU-only build"


def normalize_dtype(dtype: str) -> str:
    """`bf16`/`bfloat16` -> `bfloat16`, and so on. Raises DeviceError for an unknown name."""
    try:
        return DTYPE_ALIASES[dtype.lower()]
    except KeyError:
        raise DeviceError(
            f"unknown dtype {dtype!r}: choose float32, bfloat16 or float16 (or fp32, bf16, fp16)"
        ) from None


def supports_dtype(device: str, dtype: str) -> bool:
    """Whether torch computes `dtype` on `device` (`cpu`, `mps`, `cuda[:N]`).

    float32 works everywhere. On the CPU bfloat16 and float16 work (fast only where the chip
    has native support: see `pick_dtype`). On CUDA bfloat16 needs compute capability 8.0+
    (`torch.cuda.is_bf16_supported()`). MPS computes bfloat16 from macOS 14.
    """
    dtype = normalize_dtype(dtype)
    if dtype == "float32" or device == "cpu":
        return True
    torch = import_torch()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        return dtype == "float16" or bool(torch.cuda.is_bf16_supported())
    if device == "mps":
        if dtype == "float16":
            return True
        major = int((platform.mac_ver()[0] or "0").split(".")[0])
        return major >= 14
    return False


PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""`training.precision`'s names for the dtypes."""


def pick_precision(device: str, requested: str = "auto") -> DtypeChoice:
    """`training.precision` (`auto`, `fp32`, `bf16`, `fp16`) on `device` as `pick_dtype`
    decides it, named as train.yml names it (`dtype` is `fp32`, `bf16` or `fp16`)."""
    choice = pick_dtype(device, requested)
    return DtypeChoice(PRECISIONS[choice.dtype], choice.reason)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bfloat16 matmul (AVX512-BF16 or AMX), where bf16 beats fp32."""
    torch = import_torch()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def pick_dtype(device: str, requested: str = "auto") -> DtypeChoice:
    """The compute dtype for `device`: a torch device (`cpu`, `cuda[:N]`, `mps`), `mlx` (MLX on
    a GPU) or `mlx-cpu`. The one rule for `precision: auto` (training, both backends) and
    `dtype: auto` (generation).

    `auto` is bfloat16 where the device computes it natively (CUDA with compute capability
    8.0+, MPS on macOS 14+, MLX on a GPU, a CPU with AVX512-BF16 or AMX), else float32. On
    such CPUs bf16 trains faster to the same validation loss (docs/training.md, 'Precision');
    MLX's CPU backend computes bfloat16 no faster than float32. A requested dtype the device
    cannot compute raises DeviceError.
    """
    if requested != "auto":
        dtype = normalize_dtype(requested)
        if not device.startswith("mlx") and not supports_dtype(device, dtype):
            raise DeviceError(
                f"dtype {dtype} is not supported on {device} here"
                + (" (needs compute capability 8.0+)" if device.startswith("cuda") else "")
                + ": use float32 or auto"
            )
        return DtypeChoice(dtype, f"{dtype} was asked for")
    if device == "mlx":
        return DtypeChoice("bfloat16", "auto: MLX computes bfloat16 natively on the GPU")
    if device == "mlx-cpu":
        return DtypeChoice("float32", "auto: MLX's CPU backend computes bfloat16 no faster")
    if device == "cpu":
        if cpu_has_fast_bf16():
            return DtypeChoice("bfloat16", "auto: this CPU has native bfloat16 (AVX512-BF16/AMX)")
        return DtypeChoice(
            "float32", "auto: this CPU has no native bfloat16, where float32 is faster"
        )
    if supports_dtype(device, "bfloat16"):
        return DtypeChoice("bfloat16", f"auto: {device} computes bfloat16")
    return DtypeChoice("float32", f"auto: {device} does not compute bfloat16")


# -- memory -----------------------------------------------------------------------------------


def memory_info(*, gpus: bool = True) -> MemoryInfo:
    """RAM (total and available, from `ft_models.ram.ram()`: capped by a cgroup limit), unified
    memory on Apple Silicon, and each CUDA device's memory when `gpus` and torch is installed
    (which imports torch: seconds, once)."""
    ram = read_ram()
    unified = is_apple_silicon()
    working_set = _metal_working_set() if unified else None
    cuda = tuple(_cuda_memory()) if gpus and not unified and _torch_installed() else ()
    return MemoryInfo(
        total_bytes=ram.total_bytes,
        available_bytes=ram.available_bytes,
        unified=unified,
        metal_working_set_bytes=working_set,
        gpus=cuda,
        ram_source=ram.source,
    )


def _metal_working_set() -> int | None:
    try:
        import mlx.core as mx
    except ImportError:
        return None
    if not mx.metal.is_available():
        return None
    info = mx.metal.device_info()
    value = info.get("max_recommended_working_set_size") or info.get("memory_size")
    return int(value) if value else None


def _cuda_memory() -> list[GpuMemory]:
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(GpuMemory(index, torch.cuda.get_device_name(index), int(total), int(free)))
    return gpus
