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

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ft_train_core.state import (
    LoopState,
    host_rng_state,
    read_trainer_state,
    set_host_rng_state,
    write_trainer_state,
)

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_INDEX = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
# -- optimizer ------------------------------------------------------------------------------------


def save_optimizer(
    optimizer: torch.optim.Optimizer, folder: Path, state_dict: dict[str, Any] | None = None
) -> None:
    """Write the optimizer state as a safetensors file of its tensors plus a JSON index.

    `state_dict`: the state to write instead of `optimizer.state_dict()` (FSDP's gathered one,
    `distributed.full_optimizer_state`, in the same numbering)."""
    if state_dict is None:
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
    optimizer.load_state_dict(read_optimizer(folder))


def read_optimizer(folder: Path) -> dict[str, Any]:
    """What `save_optimizer` wrote, as `torch.optim.Optimizer.state_dict()` gives it."""
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
    return {"state": state, "param_groups": groups}


# -- RNG ------------------------------------------------------------------------------------------


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator's state: torch's as tensors, numpy's and Python's as JSON values."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{device}"] = state
    return tensors, host_rng_state()


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    set_host_rng_state(plain)


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
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Write optimizer, RNG and trainer state into the checkpoint folder being built.
    `optimizer_state`: the optimizer's state when `optimizer` holds only a shard of it (FSDP)."""
    save_optimizer(optimizer, folder, optimizer_state)
    rng_tensors, rng_plain = rng_state()
    save_file(rng_tensors, str(folder / RNG_TENSORS))
    write_trainer_state(
        folder,
        loop=loop,
        data_position=data_position,
        fingerprint=fingerprint,
        scheduler=_jsonable(scheduler.state_dict()),
        scaler=_jsonable(scaler.state_dict()) if scaler is not None else None,
        rng=rng_plain,
    )


def load_training_state(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    load_optimizer_state: Callable[[dict[str, Any]], None] | None = None,
) -> LoopState:
    """Restore optimizer, scheduler, scaler and every RNG from `folder`; return the loop state.
    `load_optimizer_state` puts the saved optimizer state in place when the plain
    `optimizer.load_state_dict` cannot (FSDP: each process keeps its shard)."""
    doc = read_trainer_state(folder)
    if load_optimizer_state is not None:
        load_optimizer_state(read_optimizer(folder))
    else:
        load_optimizer(optimizer, folder)
    scheduler.load_state_dict(doc["scheduler"])
    if scaler is not None and doc["scaler"]:
        scaler.load_state_dict(doc["scaler"])
    set_rng_state(load_file(str(folder / RNG_TENSORS)), doc["rng"])
    return LoopState(**doc["loop"])


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
