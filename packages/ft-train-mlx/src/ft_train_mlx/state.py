"""Everything a checkpoint holds besides the weights, as safetensors and JSON (no pickle).

Files in a checkpoint folder, next to the weights (the torch trainer's names and meaning):

- `optimizer.safetensors`: the optimizer's whole state tree flattened (`step`,
  `learning_rate`, and each parameter's moments, e.g. `model.layers.0.self_attn.q_proj.lora_a.m`);
- `trainer_state.json`: the step, the data position, the accumulation micro-step, the best
  evaluation and patience counter, the schedule position, numpy's and Python's RNG, and the
  fingerprint of the config, model and data the run started with.

MLX's random state (dropout): MLX has no call to set its global key back, so the loop seeds it
from `(seed, micro-batch index)` before every micro-batch (`seed_micro_batch`). The stream a
step draws from is then a function of the step alone, and a resumed run draws what the
uninterrupted run drew, with nothing to restore.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import attrs
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ft_config import TrainConfig
from ft_config.structure import unstructure_config

OPTIMIZER_TENSORS = "optimizer.safetensors"
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
    "resources.num_threads",
    "model.name",
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


def seed_micro_batch(seed: int, micro_batch: int) -> None:
    """Seed MLX's global random state for global micro-batch `micro_batch` of a run."""
    key = np.random.SeedSequence([seed % 2**63, micro_batch]).generate_state(1, dtype=np.uint64)
    mx.random.seed(int(key[0]))


# -- optimizer ------------------------------------------------------------------------------------


def save_optimizer(optimizer: optim.Optimizer, folder: Path) -> None:
    tensors = dict(tree_flatten(optimizer.state))
    mx.eval(tensors)
    mx.save_safetensors(str(folder / OPTIMIZER_TENSORS), tensors)


def load_optimizer(optimizer: optim.Optimizer, model: nn.Module, folder: Path) -> None:
    """Restore what `save_optimizer` wrote into `optimizer` (for the same trainable weights)."""
    tensors = mx.load(str(folder / OPTIMIZER_TENSORS))
    optimizer.init(model.trainable_parameters())
    expected = {name for name, _ in tree_flatten(optimizer.state)}
    if expected != set(tensors):
        missing = sorted(expected - set(tensors))[:3]
        extra = sorted(set(tensors) - expected)[:3]
        raise ValueError(
            f"{folder / OPTIMIZER_TENSORS} does not fit this run's trainable weights "
            f"(missing {missing}, unexpected {extra}): resume with the method and settings the "
            "checkpoint was trained with"
        )
    optimizer.state = tree_unflatten(list(tensors.items()))
    optimizer.init(model.trainable_parameters())  # marks it initialized; adds nothing


# -- the whole training state ---------------------------------------------------------------------


def save_training_state(
    folder: Path,
    *,
    loop: LoopState,
    optimizer: optim.Optimizer,
    data_position: dict[str, int],
    fingerprint: dict[str, Any],
    batch_size: int | None = None,
) -> None:
    """Write optimizer and trainer state into the checkpoint folder being built
    (`batch_size`: the rows per process, which `batch_size: auto` reuses on resume)."""
    save_optimizer(optimizer, folder)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    doc = {
        "loop": attrs.asdict(loop),
        "data_position": data_position,
        "batch_size": batch_size,
        "scheduler": {"last_epoch": loop.step},  # the schedule is a function of the step
        "rng": {
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next],
            "mlx": "seeded per micro-batch from (training.seed, micro-batch index)",
        },
        "fingerprint": fingerprint,
    }
    (folder / TRAINER_STATE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def load_training_state(folder: Path, *, optimizer: optim.Optimizer, model: nn.Module) -> LoopState:
    """Restore optimizer and host RNGs from `folder`; return the loop state."""
    doc = read_trainer_state(folder)
    load_optimizer(optimizer, model, folder)
    kind, keys, pos, has_gauss, gauss = doc["rng"]["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = doc["rng"]["python"]
    random.setstate((version, tuple(internal), gauss_next))
    return LoopState(**doc["loop"])


def read_trainer_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))


# -- fingerprints (the same document the torch trainer writes) -----------------------------------


def fingerprint(
    config: TrainConfig, model_path: Path, train_data: Path, validation_data: Path | None
) -> dict[str, Any]:
    """What a run learns from: its settings (flattened, dotted keys), the base model (config.json
    hash, weight file names and sizes) and the data (prepared datasets' cache keys)."""
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
