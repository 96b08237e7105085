"""Write safetensors files one tensor at a time, in float32, float16 or bfloat16, from numpy.

`safetensors.numpy.save_file` wants every tensor in memory at once and has no bfloat16. The
format is simple enough to stream: an 8-byte little-endian header length, a JSON header giving
each tensor's dtype, shape and byte range, then the bytes in that order. So the header is
written from the shapes known up front, and each tensor is written as soon as it is converted,
keeping memory at one tensor. bfloat16 is written as its raw 16 bits.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

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


class SafetensorsWriter:
    """Writes `entries` to `path` in order; call `write` once per entry, then `close`.

    The file is fsynced on close; a missing or misshapen tensor is an error, never a short file.
    """

    def __init__(self, path: Path, entries: Sequence[TensorEntry], dtype: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        self.path = path
        self.dtype = dtype
        self.entries = list(entries)
        self._next = 0
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        start = 0
        for entry in self.entries:
            end = start + entry.nbytes(dtype)
            header[entry.name] = {
                "dtype": DTYPES[dtype][0],
                "shape": list(entry.shape),
                "data_offsets": [start, end],
            }
            start = end
        encoded = json.dumps(header, separators=(",", ":")).encode()
        # pad with spaces so the data starts 8-byte aligned, as safetensors itself does
        encoded += b" " * (-len(encoded) % 8)
        self._file: BinaryIO = path.open("wb")
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)

    def write(self, name: str, values: np.ndarray) -> None:
        """Append the next tensor (float32 values; converted to the file's dtype here)."""
        entry = self.entries[self._next] if self._next < len(self.entries) else None
        if entry is None or entry.name != name or tuple(values.shape) != entry.shape:
            expected = f"{entry.name} {entry.shape}" if entry else "nothing"
            raise ValueError(f"{self.path}: got {name} {tuple(values.shape)}, expected {expected}")
        self._file.write(memoryview(convert(values, self.dtype)).cast("B"))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.entries):
            self._file.close()
            raise ValueError(f"{self.path}: {len(self.entries) - self._next} tensors never written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


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
