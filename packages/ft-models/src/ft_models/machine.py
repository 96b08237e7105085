"""What this machine has for fine-tuning, as plain data: chip, cores, RAM, disk, NVIDIA GPUs,
the training backends that work, the libraries installed. `ft doctor` prints it; a server
or dashboard shows the same.

Backends are probed in child processes: importing torch or mlx can take seconds, and a broken
install can crash the interpreter; a probe that fails must not take its caller down with it.
GPUs are listed with nvidia-smi, so that nothing here imports torch in this process.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from ft_models.device import is_apple_silicon
from ft_models.ram import ram

PROBE_TIMEOUT_S = 180
LIBRARIES = (
    "transformers",
    "peft",
    "mlx-lm",
    "huggingface-hub",
    "safetensors",
    "gguf",
    "tokenizers",
)
"""The libraries whose versions the report lists (None: not installed)."""


def probe_torch() -> dict[str, Any]:
    """What torch can do here: version, CUDA build, GPUs (name, memory, bfloat16), MPS, the
    device it would use, threads, and whether a tiny matmul computes. Imports torch: run it
    through :func:`run_probe`."""
    import torch

    info: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda}
    cuda = torch.cuda.is_available()
    info["cuda"] = cuda
    if cuda:
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(),
            }
            for i in range(torch.cuda.device_count())
        ]
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps and mps.is_available())
    info["device"] = "cuda" if cuda else "mps" if info["mps"] else "cpu"
    info["threads"] = torch.get_num_threads()
    # A tiny matmul proves the install computes, not only imports.
    x = torch.ones(4, 4, device=info["device"])
    info["works"] = bool((x @ x).sum().item() == 64.0)
    return info


def probe_mlx() -> dict[str, Any]:
    """What MLX can do here: version, Metal, its default device, and whether a tiny matmul
    computes. Imports mlx: run it through :func:`run_probe`."""
    import mlx.core as mx

    info: dict[str, Any] = {"version": metadata.version("mlx")}
    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    info["metal"] = metal
    info["device"] = str(mx.default_device())
    a = mx.ones((4, 4))
    info["works"] = bool((a @ a).sum().item() == 64.0)
    return info


def run_probe(name: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """``probe_<name>()`` (``torch`` or ``mlx``) in a child process: its result with
    ``ok: True``, or ``ok: False`` and the ``error`` (the last line the child printed, or the
    timeout)."""
    if name not in ("torch", "mlx"):
        raise ValueError(f"no probe for {name!r}: torch or mlx")
    code = (
        "import json\n"
        f"from ft_models.machine import probe_{name}\n"
        f"print(json.dumps({{'ok': True, **probe_{name}()}}))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:g} s"}
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return {"ok": False, "error": error}


def installed_version(dist: str) -> str | None:
    """The installed version of the distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def chip() -> str:
    """The CPU's name (`Apple M3 Pro`, `AMD EPYC 7763 64-Core Processor`), else its machine
    type."""
    if sys.platform == "darwin":
        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.stdout.strip():
            return out.stdout.strip()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_gpus() -> list[tuple[str, int]]:
    """(name, bytes of memory) of each NVIDIA GPU, from nvidia-smi (so torch is not imported);
    empty without nvidia-smi, or when it fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else []


def parse_nvidia_smi(text: str) -> list[tuple[str, int]]:
    """(name, bytes) per GPU from `nvidia-smi --query-gpu=name,memory.total
    --format=csv,noheader,nounits` (memory in MiB)."""
    gpus = []
    for line in text.splitlines():
        name, _, mib = line.rpartition(",")
        if name.strip() and mib.strip().isdigit():
            gpus.append((name.strip(), int(mib.strip()) * 2**20))
    return gpus


def machine_memory() -> tuple[int, str]:
    """The memory a training job on this machine can use, in bytes, and what it is: the
    largest NVIDIA GPU's (`GPU <name>`), else the total RAM (`unified memory` on Apple
    Silicon, else `RAM`; a container's cgroup limit caps it, see `ft_models.ram`)."""
    gpus = nvidia_gpus()
    if gpus:
        name, total = max(gpus, key=lambda gpu: gpu[1])
        return total, f"GPU {name}"
    return ram().total_bytes, "unified memory" if is_apple_silicon() else "RAM"


def machine_report() -> dict[str, Any]:
    """Everything `ft doctor` reports, as plain data.

    Keys: ft (the ft-* distributions and their versions), system (python, os, machine, chip,
    cores, ram_gb, ram_available_gb, ram_source, disk_free_gb at ft's home, git), paths (ft's
    folders), torch and mlx (:func:`run_probe`'s result, or ``ok: False, missing: True``),
    libraries (name -> version or None), embedded_model (path and size_mb of the embedded
    GGUF, or None), usable_backends (`torch (cpu)`, `mlx (metal)`, ...), recommended_backend
    (mlx on Apple Silicon when it works, else torch when it works, else the one that works).
    """
    from ft_config import app_paths
    from ft_models.embedded import find_embedded_gguf

    paths = app_paths()
    memory = ram()
    disk_at = next((p for p in (paths.home, *paths.home.parents) if p.exists()), paths.home)
    report: dict[str, Any] = {
        "ft": {
            d.metadata["Name"]: d.version
            for d in metadata.distributions()
            if (d.metadata["Name"] or "").startswith("ft-")
        },
        "system": {
            "python": f"{platform.python_version()} ({sys.executable})",
            "os": platform.platform(),
            "machine": platform.machine(),
            "chip": chip(),
            "cores": os.cpu_count(),
            "ram_gb": round(memory.total_bytes / 2**30, 1),
            "ram_available_gb": round(memory.available_bytes / 2**30, 1),
            "ram_source": memory.source,
            "disk_free_gb": round(shutil.disk_usage(disk_at).free / 2**30, 1),
            "git": shutil.which("git") is not None,
        },
        "paths": paths.as_dict(),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        torch_future = pool.submit(run_probe, "torch") if installed_version("torch") else None
        mlx_future = pool.submit(run_probe, "mlx") if installed_version("mlx") else None
        report["torch"] = torch_future.result() if torch_future else {"ok": False, "missing": True}
        report["mlx"] = mlx_future.result() if mlx_future else {"ok": False, "missing": True}
    report["libraries"] = {name: installed_version(name) for name in LIBRARIES}
    gguf = find_embedded_gguf()
    report["embedded_model"] = (
        {"path": str(gguf), "size_mb": round(gguf.stat().st_size / 1e6, 1)} if gguf else None
    )
    usable = []
    if report["torch"].get("ok") and report["torch"].get("works"):
        usable.append(f"torch ({report['torch']['device']})")
    if report["mlx"].get("ok") and report["mlx"].get("works"):
        usable.append(f"mlx ({'metal' if report['mlx']['metal'] else 'cpu'})")
    report["usable_backends"] = usable
    report["recommended_backend"] = _recommended(usable)
    return report


def _recommended(usable: list[str]) -> str | None:
    if is_apple_silicon() and any(u.startswith("mlx") for u in usable):
        return "mlx"
    if any(u.startswith("torch") for u in usable):
        return "torch"
    return usable[0].split()[0] if usable else None
