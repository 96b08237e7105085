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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ft_train_torch.packing import IGNORE_INDEX, Batch


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
        """This process' rows of the global `batch`."""
        if self.size == 1:
            return batch
        rows = np.array_split(np.arange(len(batch["input_ids"])), self.size)[self.rank]
        if len(rows) == 0:
            empty = {key: value[:1].copy() for key, value in batch.items()}
            empty["labels"][:] = IGNORE_INDEX
            empty["loss_mask"][:] = 0
            empty["_no_tokens"] = np.ones(1, dtype=np.int64)
            return empty
        return {key: value[rows] for key, value in batch.items()}

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
    """DDP (or, on CUDA with `fsdp`, FSDP2's fully_shard) around `model` when distributed."""
    if not world.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if module.__class__.__name__.endswith("DecoderLayer"):
                fully_shard(module)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
