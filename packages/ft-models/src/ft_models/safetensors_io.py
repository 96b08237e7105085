"""Read and write safetensors files with numpy alone: no torch, no `safetensors` package.

    header = read_header(path)                   # names, dtypes, shapes, metadata; no values
    for name, values in iter_tensors(path): ...  # one tensor at a time, memory-mapped
    tensors = read_tensors(path, ["a", "b"])     # just the named ones
    write_tensors(path, {"a": array}, metadata={"format": "pt"})   # whole or not at all

The format: an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
shape and byte range (`data_offsets`, relative to the end of the header) plus an optional
`__metadata__` of strings, then the raw little-endian bytes. `safetensors`' own numpy backend
refuses bfloat16 (numpy has no such type), and imported GGUFs and bf16 checkpoints are exactly
that, so floats are widened to float32 when read (bfloat16 by putting 16 zero bits below its
own, which is exact). A header that does not fit its file is an error naming the file, not a
read past the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from math import prod
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import attrs
import numpy as np

from ft_config.files import fsync_dir

MAX_HEADER_BYTES = 100_000_000
"""The largest header ft reads (the limit `safetensors` itself sets)."""

ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
"""Bytes per element of every safetensors dtype (to check each tensor's byte range)."""

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    code: np.dtype(kind)
    for code, kind in {
        "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
        "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
    }.items()
}  # fmt: skip
"""The safetensors dtypes numpy holds as they are (BF16 is read as float32, F8 not at all)."""


class SafetensorsError(ValueError):
    """A safetensors file ft cannot read or write: which file, and what is wrong with it."""


@attrs.frozen
class TensorInfo:
    """One tensor's entry in a header: where its bytes are, and what they hold."""

    name: str
    dtype: str
    """The safetensors dtype: F32, F16, BF16, I64, ..."""
    shape: tuple[int, ...]
    begin: int
    """Byte range in the data section (after the header): [begin, end)."""
    end: int


@attrs.frozen
class SafetensorsHeader:
    """What a file holds, read without any tensor values."""

    path: Path
    tensors: dict[str, TensorInfo]
    """Name -> entry, in the header's order."""
    metadata: dict[str, str]
    """The header's `__metadata__` ({"format": "pt"} for files torch writes)."""
    data_start: int
    """Byte offset of the data section in the file: 8 + the header's length."""


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32: the same bits, 16 zero bits below."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The header of the safetensors file `path`, every entry checked to lie inside the file
    and to be as long as its shape and dtype say. Raises SafetensorsError naming the file."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > size - 8:
            raise SafetensorsError(
                f"{path}: not a safetensors file, or a truncated one: its header says it is "
                f"{length} bytes long, and the file has only {size - 8} bytes after the length"
            )
        if length > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path}: a header of {length} bytes is not plausible")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SafetensorsError(f"{path}: the header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    data_size = size - 8 - length
    tensors = {name: _entry(path, name, info, data_size) for name, info in header.items()}
    return SafetensorsHeader(path, tensors, dict(metadata), 8 + length)


def _entry(path: Path, name: str, info: Any, data_size: int) -> TensorInfo:
    def bad(why: str) -> SafetensorsError:
        return SafetensorsError(f"{path}: tensor {name!r}: {why}")

    if not isinstance(info, dict):
        raise bad("its entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in ITEM_SIZES:
        raise bad(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad(f"shape {shape!r} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise bad(
            f"data_offsets [{begin}, {end}] lie outside the file's {data_size} bytes of data "
            "(a truncated or corrupt file)"
        )
    expected = prod(shape) * ITEM_SIZES[dtype]
    if end - begin != expected:
        raise bad(
            f"{end - begin} bytes for a {dtype} tensor of shape {tuple(shape)}, which needs "
            f"{expected}"
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _values(path: Path, data: np.ndarray, entry: TensorInfo) -> np.ndarray:
    raw = data[entry.begin : entry.end]
    if entry.dtype == "BF16":
        return bf16_to_f32(raw.view("<u2")).reshape(entry.shape)
    if entry.dtype not in NUMPY_DTYPES:
        raise SafetensorsError(
            f"{path}: tensor {entry.name} has dtype {entry.dtype}, which ft cannot read"
        )
    values = raw.view(NUMPY_DTYPES[entry.dtype]).reshape(entry.shape)
    return (
        values.astype(np.float32) if values.dtype.kind == "f" and entry.dtype != "F32" else values
    )


def iter_tensors(
    path: str | os.PathLike[str], names: Iterable[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, values) for every tensor of the file (or only `names`, in the header's order),
    one at a time. Floats come as float32 (F16, BF16 and F64 widened), other types as they
    are saved; values that need no widening are read-only views of the memory-mapped file."""
    header = read_header(path)
    wanted = None if names is None else set(names)
    if wanted is not None and (missing := wanted - header.tensors.keys()):
        raise SafetensorsError(f"{header.path}: no tensor {', '.join(sorted(missing))}")
    if header.data_start == header.path.stat().st_size:  # nothing to map (no tensor bytes)
        data = np.zeros(0, dtype=np.uint8)
    else:
        data = np.memmap(header.path, dtype=np.uint8, mode="r", offset=header.data_start)
    for name, entry in header.tensors.items():
        if wanted is None or name in wanted:
            yield name, _values(header.path, data, entry)


def read_tensors(
    path: str | os.PathLike[str], names: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """The tensors of the file (or only `names`) as a dict, each as `iter_tensors` gives it."""
    return dict(iter_tensors(path, names))


class SafetensorsWriter:
    """Streams tensors into `path`: the header first, from `layout` (name, safetensors dtype,
    shape) known up front, then each tensor's bytes as `write` receives them, in that order, so
    memory stays at one tensor. A missing or misshapen tensor is an error, never a short file.

    The file is fsynced on `close`; writing to a temporary name and renaming it is the
    caller's choice (`write_tensors` does; the GGUF importer stages a whole folder instead)."""

    def __init__(
        self,
        path: Path,
        layout: Sequence[tuple[str, str, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.layout = [(name, dtype, tuple(shape)) for name, dtype, shape in layout]
        self._next = 0
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        start = 0
        for name, dtype, shape in self.layout:
            if dtype not in ITEM_SIZES:
                raise SafetensorsError(f"{self.path}: tensor {name}: unknown dtype {dtype!r}")
            end = start + prod(shape) * ITEM_SIZES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}
            start = end
        encoded = json.dumps(header, separators=(",", ":")).encode()
        # pad with spaces so the data starts 8-byte aligned, as safetensors itself does
        encoded += b" " * (-len(encoded) % 8)
        self._file: BinaryIO = self.path.open("wb")
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)

    def write(self, name: str, values: np.ndarray) -> None:
        """Append the next tensor's values: a numpy array of the layout's shape whose dtype is
        the layout's (uint16 bit patterns for BF16)."""
        expected = self.layout[self._next] if self._next < len(self.layout) else None
        if expected is None or expected[0] != name or tuple(values.shape) != expected[2]:
            wanted = f"{expected[0]} {expected[2]}" if expected else "nothing"
            raise SafetensorsError(
                f"{self.path}: got {name} {tuple(values.shape)}, expected {wanted}"
            )
        dtype = expected[1]
        numpy_dtype = np.dtype("<u2") if dtype == "BF16" else NUMPY_DTYPES.get(dtype)
        if numpy_dtype is None or values.dtype.newbyteorder("<") != numpy_dtype:
            raise SafetensorsError(
                f"{self.path}: tensor {name} is {values.dtype}, and the header says {dtype}"
            )
        array = np.ascontiguousarray(values, dtype=numpy_dtype)
        if array.size:  # an empty tensor has no bytes (and memoryview refuses to cast it)
            self._file.write(memoryview(array).cast("B"))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.layout):
            self._file.close()
            raise SafetensorsError(
                f"{self.path}: {len(self.layout) - self._next} tensors never written"
            )
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


def safetensors_dtype(array: np.ndarray) -> str:
    """The safetensors dtype that holds `array` as it is. Raises SafetensorsError for a type
    safetensors has no name for (complex, object, strings)."""
    for code, dtype in NUMPY_DTYPES.items():
        if array.dtype.newbyteorder("<") == dtype:
            return code
    raise SafetensorsError(f"safetensors cannot hold a numpy {array.dtype} tensor")


def write_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `tensors` (name -> numpy array, each kept in its own dtype) and `metadata` to the
    safetensors file `path`, in name order, atomically: into a temporary file beside it,
    fsynced, then renamed, so `path` is the old file or the new one, never a part."""
    path = Path(path)
    arrays = {name: np.asarray(tensors[name]) for name in sorted(tensors)}
    layout = [(name, safetensors_dtype(a), tuple(a.shape)) for name, a in arrays.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o644)  # mkstemp creates it 0600; a weights file is for everyone to read
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with SafetensorsWriter(tmp, layout, metadata) as writer:
            for name, values in arrays.items():
                writer.write(name, values)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


__all__ = [
    "ITEM_SIZES",
    "MAX_HEADER_BYTES",
    "NUMPY_DTYPES",
    "SafetensorsError",
    "SafetensorsHeader",
    "SafetensorsWriter",
    "TensorInfo",
    "bf16_to_f32",
    "iter_tensors",
    "read_header",
    "read_tensors",
    "safetensors_dtype",
    "write_tensors",
]
