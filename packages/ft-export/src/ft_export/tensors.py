"""Read a Hugging Face safetensors folder as numpy arrays, without torch.

`safetensors`' numpy backend refuses bfloat16 (numpy has no such dtype), and an imported GGUF or
a bf16 checkpoint is exactly that. The format is simple enough to read directly: an 8-byte
header length, a JSON header, then raw little-endian tensors, which are memory-mapped here and
widened to float32 one tensor at a time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class WeightsError(ValueError):
    """A model folder whose weights cannot be read."""


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, in shard order."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    found = [f for f in found if not f.name.startswith("adapter")]
    if not found:
        raise WeightsError(
            f"{folder}: no safetensors weights (model.safetensors or an index); "
            "ft exports only safetensors models"
        )
    return found


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise WeightsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise WeightsError(f"{path}: safetensors header of {size} bytes is not plausible")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32: the same bits, 16 zero bits below."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def iter_tensors(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32-or-integer array) for every tensor of the folder, file by file."""
    for path in weight_files(folder):
        yield from iter_file(path)


def iter_file(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32-or-integer array) for every tensor of one safetensors file; floats are
    widened to float32, other types kept."""
    header, start = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[start + begin : start + end]
        dtype = info["dtype"]
        shape = tuple(info["shape"])
        if dtype == "BF16":
            values = bf16_to_f32(raw.view(np.uint16)).reshape(shape)
        elif dtype in _NUMPY_DTYPES:
            values = raw.view(_NUMPY_DTYPES[dtype]).reshape(shape)
            if values.dtype in (np.float16, np.float64):
                values = values.astype(np.float32)
        else:
            raise WeightsError(f"{path}: tensor {name} has dtype {dtype}, which ft cannot read")
        yield name, values


def tensor_names(folder: Path) -> list[str]:
    """Every tensor name in the folder, without reading any values."""
    names: list[str] = []
    for path in weight_files(folder):
        names.extend(read_header(path)[0])
    return names
