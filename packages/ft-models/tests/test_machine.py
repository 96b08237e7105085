"""ft_models.machine: GPUs from nvidia-smi, the memory a job can use, probes, the report."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from ft_models import machine
from ft_models.ram import ram


def test_gpu_memory_from_nvidia_smi() -> None:
    text = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA GeForce RTX 4090, 24564\n[N/A], x\n"
    assert machine.parse_nvidia_smi(text) == [
        ("NVIDIA H100 80GB HBM3", 81559 * 2**20),
        ("NVIDIA GeForce RTX 4090", 24564 * 2**20),
    ]


def test_machine_memory_is_the_largest_gpu_else_the_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [("NVIDIA GeForce RTX 4090", 24564 * 2**20), ("NVIDIA H100", 81559 * 2**20)]
    monkeypatch.setattr(machine, "nvidia_gpus", lambda: gpus)
    assert machine.machine_memory() == (81559 * 2**20, "GPU NVIDIA H100")
    monkeypatch.setattr(machine, "nvidia_gpus", lambda: [])
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: False)
    assert machine.machine_memory() == (ram().total_bytes, "RAM")


def test_a_probe_that_fails_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no probe for 'jax'"):
        machine.run_probe("jax")
    monkeypatch.setattr(sys, "executable", "false")  # a child that exits 1, saying nothing
    assert machine.run_probe("torch") == {"ok": False, "error": "exit code 1"}


def test_the_report_names_the_usable_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    probes: dict[str, dict[str, Any]] = {
        "torch": {"ok": True, "works": True, "device": "cpu"},
        "mlx": {"ok": False, "error": "ImportError: libmlx.so"},
    }
    monkeypatch.setattr(machine, "run_probe", lambda name: probes[name])
    monkeypatch.setattr(machine, "installed_version", lambda dist: "1.0")
    report = machine.machine_report()
    assert list(report) == [
        "ft",
        "system",
        "paths",
        "torch",
        "mlx",
        "libraries",
        "embedded_model",
        "usable_backends",
        "recommended_backend",
    ]
    assert (report["torch"], report["mlx"]) == (probes["torch"], probes["mlx"])
    assert report["usable_backends"] == ["torch (cpu)"]
    assert report["recommended_backend"] == "torch"
    assert report["libraries"] == dict.fromkeys(machine.LIBRARIES, "1.0")
    assert report["system"]["ram_gb"] == round(ram().total_bytes / 2**30, 1)

    probes["mlx"] = {"ok": True, "works": True, "metal": True}
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: True)
    report = machine.machine_report()
    assert report["usable_backends"] == ["torch (cpu)", "mlx (metal)"]
    assert report["recommended_backend"] == "mlx"
