"""Helpers the tests share (imported through conftest's sys.path). The name is unique across
the workspace: ft-train-torch's tests have their own helpers, and one pytest run imports both."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from ft_train_mlx import MLXTrainer


def train(job: Any, *, stop_at: int | None = None) -> tuple[list[dict[str, Any]], Any]:
    """Run `job`; with `stop_at`, should_stop says yes once step `stop_at` is done."""
    events: list[dict[str, Any]] = []

    def should_stop() -> bool:
        return stop_at is not None and any(
            e["type"] == "step" and e["step"] >= stop_at for e in events
        )

    result = MLXTrainer().train(job, emit=events.append, should_stop=should_stop)
    return events, result


def tensors_sha256(folder: Path, file: str = "adapter_model.safetensors") -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(Path(folder) / file)).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(np.ascontiguousarray(tensor).tobytes())
    return digest.hexdigest()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def launch(job_file: str) -> None:
    """A child process' work in the crash tests: run a job file (see ft_train_mlx.launch)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    from ft_train_mlx.launch import main

    main([job_file])


MAX_LEN = 64


def settings(**overrides: Any) -> dict[str, Any]:
    """A config dict: small and fast defaults, then `overrides` given as `section__key=value`."""
    data: dict[str, Any] = {
        "data": {"max_seq_length": MAX_LEN, "packing": False},
        "method": {
            "name": "lora",
            "rank": 4,
            "alpha": 8.0,
            "dropout": 0.0,
            "target_modules": ["q_proj", "v_proj"],
        },
        "training": {
            "epochs": 1,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "warmup_steps": 0,
            "seed": 0,
            "lr_scheduler": "constant",
            "keep_last": 2,
            "precision": "fp32",  # float32 numbers, whatever `auto` picks on this machine
        },
        "resources": {"device": "cpu", "num_threads": 1},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return data
