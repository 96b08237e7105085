"""Data parallelism under torchrun: the process group, DDP, and each process' share of a batch.

How the data is split: every process builds the same seeded `Batches` with batch size
`world_size * batch_size` (the global batch) and takes its own contiguous block of rows
(`numpy.array_split`, so blocks differ by at most one row). Gradients are averaged by DDP and
the loss of every process is divided by the trained tokens of the whole global step, so two
processes with `batch_size: b` make the same update as one process with `batch_size: 2b` (up to
the order of floating-point sums). A process left without a row (a short last batch) runs a
row whose targets are all ignored: it adds nothing but still joins the gradient all-reduce.

Only rank 0 writes checkpoints, the final adapter and events; `should_stop` is rank 0's answer,
broadcast to all.

`resources.strategy: fsdp` shards the model with FSDP2 (`fully_shard` on each transformer block,
then on the whole model) instead of replicating it with DDP: each process holds 1/N of the
weights, gradients and optimizer state. The batch split and the loss scaling are the same (FSDP
also averages gradients). A checkpoint needs every process: `full_weights` and
`full_optimizer_state` gather the weights and the optimizer state to rank 0 (on the CPU), which writes them in the same files as a
DDP or single-process run, so a run can resume under either strategy or alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ft_data.batches import Batch, process_share

# What FSDP can shard and gather here: not QLoRA's 4-bit base, nor peft's prompt encoders.
SHARDED_METHODS = ("lora", "dora", "full")


@dataclass(frozen=True)
class World:
    """This process' place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: Batch) -> Batch:
        """This process' rows of the global `batch` (see `ft_data.batches.process_share`)."""
        return process_share(batch, self.rank, self.size)

    def sum(self, value: float, device: torch.device) -> float:
        """`value` summed over all processes (itself when alone)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's `flag`, on every process."""
        if self.size == 1:
            return flag
        tensor = torch.tensor([1 if flag else 0], device=device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())


def use_fsdp(strategy: str, method: str, world: World, note: Callable[[str, str], None]) -> bool:
    """Whether to shard with FSDP: `resources.strategy: fsdp` with several processes, for the
    methods whose weights FSDP can gather (`SHARDED_METHODS`); `note(level, text)` tells why
    not with one process. ft-runs checks the same through the trainer's `capabilities()`
    before launching; this guards direct callers."""
    if strategy != "fsdp":
        return False
    if not world.distributed:
        note(
            "info", "resources.strategy: fsdp with one process: nothing to shard, training as usual"
        )
        return False
    if method not in SHARDED_METHODS:
        raise ValueError(
            f"resources.strategy: fsdp does not support method {method} (its weights cannot be "
            f"sharded and gathered by FSDP here): use resources.strategy: ddp, or method "
            f"{' / '.join(SHARDED_METHODS)}"
        )
    return True


def world_from_env() -> World:
    """The world torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK (one process without them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(world: World, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on the CPU."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)


def device_for(world: World, device: torch.device) -> torch.device:
    """Each process on a GPU of its own (`cuda:LOCAL_RANK`); CPU processes share the CPU."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def wrap(
    model: torch.nn.Module, world: World, device: torch.device, *, fsdp: bool = False
) -> torch.nn.Module:
    """DDP, or with `fsdp` FSDP2's `fully_shard`, around `model` when distributed."""
    if not world.distributed:
        return model
    if fsdp:
        return shard(model, device)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2 over the process group: each transformer block sharded on its own (its weights
    are gathered just before it runs and freed after), then the rest of the model.

    The mesh is built for `device`'s type: left to itself, FSDP picks the machine's
    accelerator, and CPU processes on a one-GPU machine would all ask for a GPU of their own."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in shard_units(model):
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP shards one by one: the model's transformer blocks, as transformers names
    them in `_no_split_modules` (LlamaDecoderLayer, BertLayer...), else any `*DecoderLayer`."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        units = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    return units


def is_fsdp(model: torch.nn.Module) -> bool:
    """True when `model` was sharded by FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_sync(model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) of a micro-batch that is not
    the last of its optimizer step; a no-op for a single process."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_weights(model: torch.nn.Module, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """An FSDP model's whole weights (only the trainable ones with `trainable_only`), gathered
    to rank 0's CPU. Every process must call this together; the others get an empty dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_gathered(trainable_only))


def full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """An FSDP model's whole optimizer state, gathered to rank 0's CPU in the numbering
    `optimizer.state_dict()` uses (what a single process saves). Every process must call this
    together; the others get an empty dict."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_gathered(False))
    if not by_name:
        return {}
    index_of = {name: i for i, name in enumerate(parameter_names(model, optimizer))}
    return {
        "state": {index_of[name]: entries for name, entries in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index_of[name] for name in group["params"]]}
            for group in by_name["param_groups"]
        ],
    }


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Put a whole optimizer state (`full_optimizer_state`'s numbering) into the optimizer of an
    FSDP model: every process passes the whole state and keeps its shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = parameter_names(model, optimizer)
    by_name = {
        "state": {names[int(index)]: entries for index, entries in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )


def parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter the optimizer updates, in the optimizer's own numbering (the
    index `optimizer.state_dict()` gives it)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _gathered(trainable_only: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only
    )


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
