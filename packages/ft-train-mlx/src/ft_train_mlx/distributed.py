"""Data parallelism with `mx.distributed` (launched by `mlx.launch`, ring backend).

The split is the torch trainer's: every process builds the same seeded `Batches` with batch
size `world_size * batch_size` and takes its own contiguous block of rows
(`numpy.array_split`). Gradients of the summed loss are added across processes
(`mx.distributed.all_sum`) and divided by the trained tokens of the whole global step, so two
processes with `batch_size: b` make the update one process makes with `2b` (up to the order of
floating-point sums). A process left without a row runs a row whose targets are all ignored.
Only rank 0 writes checkpoints, the final adapter and events; `should_stop` is rank 0's answer.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx.utils import tree_map

from ft_data.batches import Batch, process_share


@dataclass(frozen=True)
class World:
    """This process' place among the training processes."""

    rank: int = 0
    size: int = 1
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: Batch) -> Batch:
        """This process' rows of the global `batch` (see `ft_data.batches.process_share`)."""
        return process_share(batch, self.rank, self.size)

    def sum(self, value: float) -> float:
        """`value` summed over all processes (itself when alone)."""
        if self.size == 1:
            return value
        total = mx.distributed.all_sum(mx.array([value], dtype=mx.float32), group=self.group)
        return float(total.item())

    def sum_tree(self, tree: Any) -> Any:
        """Every array of `tree` summed over all processes."""
        if self.size == 1:
            return tree
        return tree_map(lambda g: mx.distributed.all_sum(g, group=self.group), tree)

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every process."""
        if self.size == 1:
            return flag
        return self.sum(1.0 if (flag and self.is_main) else 0.0) > 0.5

    def barrier(self) -> None:
        if self.size > 1:
            mx.eval(mx.distributed.all_sum(mx.array([0.0]), group=self.group))


@functools.cache
def world_from_env() -> World:
    """The world `mlx.launch` set up (MLX_RANK and a hostfile); one process without it."""
    if "MLX_RANK" not in os.environ:
        return World()
    group = mx.distributed.init(strict=True, backend="ring")
    return World(group.rank(), group.size(), group)
