"""Everything a checkpoint holds besides the weights, as safetensors and JSON (no pickle).

Files in a checkpoint folder, next to the weights:

- `optimizer.safetensors`: every tensor of the optimizer state, named `state.<param>.<key>`;
- `optimizer.json`: the index: `param_groups`, and the state entries that are not tensors;
- `rng.safetensors`: torch's CPU generator (a uint8 tensor) and each CUDA device's;
- `trainer_state.json`: the step, the data position, the accumulation micro-step, the best
  evaluation so far and the patience counter, the scheduler and loss-scaler state, numpy's and
  Python's RNG, and the fingerprint of the config and data the run was started with.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ft_config import TrainConfig
from ft_config.structure import unstructure_config

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_INDEX = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
TRAINER_STATE = "trainer_state.json"

# Settings that may change between a run and its resume without changing what is learnt.
RESUME_NEUTRAL = (
    "logging.",
    "output.",
    "tune.",
    "profile",
    "training.save_every",
    "training.keep_last",
    "training.eval_every",
    "training.early_stopping_patience",
    "training.early_stopping_threshold",
    "training.max_steps",
    "training.backend",
    "resources.device",
    "resources.max_memory_gb",
    "resources.hostfile",
    "model.name",  # where the weights came from; the model fingerprint below says what they are
    "model.revision",
    "data.train",
    "data.validation",
    "data.test",
)


@attrs.define
class LoopState:
    """The loop's own counters, saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches of the current step done (0 at every checkpoint)
    best_metric: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None  # folder name under the checkpoints folder
    evals_without_improvement: int = 0
    elapsed_s: float = 0.0


# -- optimizer ------------------------------------------------------------------------------------


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Write the optimizer state as a safetensors file of its tensors plus a JSON index."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                plain.setdefault(str(index), {})[key] = value
    save_file(tensors, str(folder / OPTIMIZER_TENSORS))
    index_doc = {
        "param_groups": state_dict["param_groups"],
        "tensor_keys": sorted(tensors),
        "plain_state": plain,
    }
    (folder / OPTIMIZER_INDEX).write_text(json.dumps(index_doc, indent=1) + "\n", encoding="utf-8")


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore what `save_optimizer` wrote into `optimizer` (built over the same parameters)."""
    index_doc = json.loads((folder / OPTIMIZER_INDEX).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / OPTIMIZER_TENSORS))
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, entries in index_doc["plain_state"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [
        {
            key: tuple(value) if isinstance(value, list) and key != "params" else value
            for key, value in group.items()
        }
        for group in index_doc["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# -- RNG ------------------------------------------------------------------------------------------


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator's state: torch's as tensors, numpy's and Python's as JSON values."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{device}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    plain = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


# -- the whole training state ---------------------------------------------------------------------


def save_training_state(
    folder: Path,
    *,
    loop: LoopState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    data_position: dict[str, int],
    fingerprint: dict[str, Any],
) -> None:
    """Write optimizer, RNG and trainer state into the checkpoint folder being built."""
    save_optimizer(optimizer, folder)
    rng_tensors, rng_plain = rng_state()
    save_file(rng_tensors, str(folder / RNG_TENSORS))
    doc = {
        "loop": attrs.asdict(loop),
        "data_position": data_position,
        "scheduler": _jsonable(scheduler.state_dict()),
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None else None,
        "rng": rng_plain,
        "fingerprint": fingerprint,
    }
    (folder / TRAINER_STATE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def load_training_state(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> LoopState:
    """Restore optimizer, scheduler, scaler and every RNG from `folder`; return the loop state."""
    doc = read_trainer_state(folder)
    load_optimizer(optimizer, folder)
    scheduler.load_state_dict(doc["scheduler"])
    if scaler is not None and doc["scaler"]:
        scaler.load_state_dict(doc["scaler"])
    set_rng_state(load_file(str(folder / RNG_TENSORS)), doc["rng"])
    return LoopState(**doc["loop"])


def read_trainer_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if callable(value):
        return None
    return value


# -- fingerprints ---------------------------------------------------------------------------------


def fingerprint(
    config: TrainConfig, model_path: Path, train_data: Path, validation_data: Path | None
) -> dict[str, Any]:
    """What a run learns from: its settings (flattened, dotted keys), the base model and the data.

    The model is identified by its config.json and the names and sizes of its weight files (not
    their hashes: reading gigabytes at every checkpoint is too slow); a prepared dataset by its
    cache key (source bytes, tokenizer, template, options).
    """
    settings = _flatten(unstructure_config(config))
    model_files = {p.name: p.stat().st_size for p in sorted(Path(model_path).glob("*.safetensors"))}
    config_json = Path(model_path) / "config.json"
    model = {
        "config_sha256": hashlib.sha256(config_json.read_bytes()).hexdigest()
        if config_json.is_file()
        else None,
        "weights": model_files,
    }
    data = {"train": _dataset_id(train_data), "validation": _dataset_id(validation_data)}
    return {"settings": settings, "model": model, "data": data}


def _dataset_id(path: Path | None) -> str | None:
    if path is None:
        return None
    from ft_data.hdf5 import read_attrs

    attrs_ = read_attrs(path) or {}
    key = attrs_.get("cache_key") or attrs_.get("source_hash")
    if key:
        return str(key)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(k, str) for k in value)
            and not prefix.endswith("columns")
        ):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_fingerprints(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The differences that make resuming unsafe, one sentence each (empty: compatible)."""
    problems = []
    before, after = saved.get("settings", {}), current.get("settings", {})
    for key in sorted(set(before) | set(after)):
        if key.startswith(RESUME_NEUTRAL) or key in RESUME_NEUTRAL:
            continue
        if before.get(key) != after.get(key):
            problems.append(f"{key} was {before.get(key)!r}, now {after.get(key)!r}")
    if saved.get("model") != current.get("model"):
        problems.append("the base model differs (config.json or weight files changed)")
    for split in ("train", "validation"):
        if saved.get("data", {}).get(split) != current.get("data", {}).get(split):
            problems.append(f"the {split} data differs (a different prepared dataset)")
    return problems
