"""Write an imported model's safetensors shards one tensor at a time, in float32, float16 or
bfloat16, from float32 numpy values.

`safetensors.numpy.save_file` wants every tensor in memory at once and has no bfloat16, so the
shards are streamed with `ft_models.safetensors_io.SafetensorsWriter`: the header from the
shapes known up front, then each tensor as soon as it is converted, keeping memory at one
tensor. bfloat16 is written as its raw 16 bits. This module adds the conversion and the
sharding as `save_pretrained` does it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from ft_models import safetensors_io

DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
"""Output dtype -> (safetensors dtype name, bytes per element)."""


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even as torch
    does. A NaN stays a (quiet) NaN of the same sign; rounding could have made it infinite."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = (bits[nan] >> 16).astype(np.uint16) | 0x0040
    return rounded


def convert(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as the little-endian array to write for `dtype`."""
    if dtype == "float32":
        return np.ascontiguousarray(values, dtype="<f4")
    if dtype == "float16":
        return np.ascontiguousarray(values.astype("<f2"))
    if dtype == "bfloat16":
        return float32_to_bfloat16_bits(values).astype("<u2", copy=False)
    raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]

    def nbytes(self, dtype: str) -> int:
        return prod(self.shape) * DTYPES[dtype][1]


class SafetensorsWriter(safetensors_io.SafetensorsWriter):
    """Writes `entries` to `path` in order, all in `dtype`; call `write` once per entry with
    float32 values, then `close` (`ft_models.safetensors_io.SafetensorsWriter`, which writes
    the header and checks every tensor)."""

    def __init__(self, path: Path, entries: Sequence[TensorEntry], dtype: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        layout = [(entry.name, DTYPES[dtype][0], entry.shape) for entry in entries]
        super().__init__(path, layout, metadata={"format": "pt"})
        self.dtype = dtype

    def write(self, name: str, values: np.ndarray) -> None:
        """Append the next tensor (float32 values; converted to the file's dtype here)."""
        super().write(name, convert(values, self.dtype))


def plan_shards(
    entries: Sequence[TensorEntry], dtype: str, max_shard_bytes: int
) -> list[list[TensorEntry]]:
    """Split `entries` (in order) into shards of at most `max_shard_bytes` (a tensor larger than
    that gets a shard of its own), as `save_pretrained` does."""
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = entry.nbytes(dtype)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """File names Hugging Face uses: `model.safetensors`, or `model-00001-of-00003.safetensors`."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(shards: Sequence[Sequence[TensorEntry]], dtype: str) -> str:
    """`model.safetensors.index.json` text for sharded weights."""
    names = shard_names(len(shards))
    weight_map = {
        entry.name: name for name, shard in zip(names, shards, strict=True) for entry in shard
    }
    total = sum(entry.nbytes(dtype) for shard in shards for entry in shard)
    return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
