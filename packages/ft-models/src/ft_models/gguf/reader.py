"""Read a GGUF file's header (metadata and tensor table) with every length checked first.

A GGUF header is a chain of length-prefixed values, and a malformed or hostile file can claim
any length: gguf 0.19.0's `GGUFReader` hangs on a 43-byte file whose array claims 2^63
elements. This reader checks each count and length against the bytes left in the file (and
against a sane cap) before it reads or allocates anything, so a bad file is rejected in
milliseconds and in memory bounded by the file's size, with an error naming the file, the byte
offset and what is wrong. The tensor data itself is not read here: `TensorInfo` says where
each tensor lives, and the importer maps it lazily.

Layout (GGUF v2 and v3, little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata key/values, the
tensor infos (name, u32 dims, u64 dims..., u32 ggml type, u64 offset), padding to the
alignment, then the tensor data.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Caps far above anything a real model needs, so a corrupt count fails here rather than after
# minutes of parsing or gigabytes of allocation. The checks against the remaining file size
# come first; these only bound what a large-enough file could still claim.
MAX_TENSORS = 1 << 20
MAX_METADATA = 1 << 16
MAX_ARRAY_LENGTH = 1 << 22  # the largest vocabularies and merge lists are below 300,000
MAX_KEY_LENGTH = 1 << 16
MAX_TENSOR_NAME_LENGTH = 1 << 10
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 16

_SCALAR_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_TYPES: dict[int, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


class GGUFError(ValueError):
    """A GGUF file that cannot be read or imported: says which file, where, and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], message: str, offset: int | None = None):
        self.path = Path(path)
        self.offset = offset
        self.reason = message
        where = f" (at byte {offset})" if offset is not None else ""
        self.detail = f"{message}{where}"
        """What is wrong, without the file's name: for messages that name the file already."""
        super().__init__(f"{self.path}: {self.detail}")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: its GGUF name, its shape in numpy order (slowest axis first), its
    ggml type, and where its bytes are (absolute file offset and length)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return prod(self.shape)

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """The shape of the raw bytes as `gguf.quants.dequantize` expects them."""
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return (*self.shape[:-1], self.shape[-1] // block_size * type_size)


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file except the tensor data."""

    path: Path
    version: int
    file_size: int
    metadata: dict[str, Any]
    metadata_types: dict[str, tuple[int, ...]]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_start: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def tensor_types(self) -> dict[str, int]:
        """How many tensors the file holds of each ggml type, by type name."""
        counts: dict[str, int] = {}
        for info in self.tensors:
            counts[info.ggml_type.name] = counts.get(info.ggml_type.name, 0) + 1
        return dict(sorted(counts.items()))


class _Cursor:
    """Reads little-endian values from a buffer, checking each length against what is left."""

    def __init__(self, path: Path, buffer: Any, size: int):
        self.path = path
        self.buffer = buffer
        self.size = size
        self.pos = 0

    def fail(self, message: str, offset: int | None = None) -> GGUFError:
        return GGUFError(self.path, message, self.pos if offset is None else offset)

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.size - self.pos:
            raise self.fail(
                f"truncated file: {what} needs {nbytes} bytes but only "
                f"{self.size - self.pos} remain of {self.size}"
            )

    def scalar(self, fmt: str, what: str) -> Any:
        width = struct.calcsize(fmt)
        self.need(width, what)
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += width
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string(self, what: str, max_length: int | None = None) -> str:
        start = self.pos
        length = self.u64(f"the length of {what}")
        if max_length is not None and length > max_length:
            raise self.fail(f"{what} claims {length} bytes (more than {max_length})", start)
        if length > self.size - self.pos:
            raise self.fail(
                f"{what} claims {length} bytes but only {self.size - self.pos} remain in the file",
                start,
            )
        raw = self.buffer[self.pos : self.pos + length]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.fail(f"{what} is not valid UTF-8 ({error.reason})") from None
        self.pos += length
        return text


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and check a GGUF file's header: magic, version, every metadata value and every
    tensor info, each length checked before it is read. Raises `GGUFError` on anything
    malformed, including tensor data that would lie past the end of the file."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        file = path.open("rb")
    except FileNotFoundError:
        raise GGUFError(path, "no such file") from None
    except IsADirectoryError:
        raise GGUFError(path, "is a directory, not a GGUF file") from None
    with file:
        if file_size == 0:
            raise GGUFError(path, "empty file", 0)
        if file_size < 4 + 4 + 8 + 8:
            head = file.read(4)
            if head != GGUF_MAGIC[: len(head)]:
                raise GGUFError(path, f"not a GGUF file: it starts with {head!r}, not b'GGUF'", 0)
            raise GGUFError(
                path, f"truncated file: {file_size} bytes is shorter than a GGUF header (24)", 0
            )
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _parse(path, buffer, file_size)


def _parse(path: Path, buffer: Any, file_size: int) -> GGUFHeader:
    cursor = _Cursor(path, buffer, file_size)
    magic = bytes(buffer[0:4])
    if magic != GGUF_MAGIC:
        raise cursor.fail(f"not a GGUF file: it starts with {magic!r}, not b'GGUF'", 0)
    cursor.pos = 4
    version = cursor.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
            raise cursor.fail("big-endian GGUF files are not supported", 4)
        raise cursor.fail(
            f"unsupported GGUF version {version} (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
            4,
        )
    tensor_count = cursor.u64("the tensor count")
    metadata_count = cursor.u64("the metadata count")
    # The smallest possible entries: a tensor info is at least 8 + 4 + 8 + 4 + 8 bytes, a
    # key/value at least 8 + 4 + 1, so a count that cannot fit is rejected before any loop.
    _check_count(cursor, "tensor", tensor_count, MAX_TENSORS, 32, 8)
    _check_count(cursor, "metadata", metadata_count, MAX_METADATA, 13, 16)

    metadata: dict[str, Any] = {}
    metadata_types: dict[str, tuple[int, ...]] = {}
    for index in range(metadata_count):
        start = cursor.pos
        key = cursor.string(f"metadata key #{index}", MAX_KEY_LENGTH)
        if key in metadata:
            raise cursor.fail(f"duplicate metadata key {key!r}", start)
        value_type = cursor.u32(f"the type of metadata {key!r}")
        metadata[key], metadata_types[key] = _read_value(cursor, key, value_type)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        metadata_types.get("general.alignment", (GGUFValueType.UINT32,)) != (GGUFValueType.UINT32,)
        or not 0 < alignment <= MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise cursor.fail(f"general.alignment {alignment!r} is not a power of two up to 65536")

    raw_infos = []
    names: set[str] = set()
    for index in range(tensor_count):
        start = cursor.pos
        name = cursor.string(f"the name of tensor #{index}", MAX_TENSOR_NAME_LENGTH)
        if name in names:
            raise cursor.fail(f"duplicate tensor name {name!r}", start)
        names.add(name)
        n_dims = cursor.u32(f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cursor.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        dims_at = cursor.pos
        dims = [cursor.u64(f"the dimensions of tensor {name!r}") for _ in range(n_dims)]
        type_at = cursor.pos
        type_id = cursor.u32(f"the type of tensor {name!r}")
        offset = cursor.u64(f"the data offset of tensor {name!r}")
        try:
            ggml_type = GGMLQuantizationType(type_id)
            block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise cursor.fail(f"tensor {name!r} has unknown ggml type {type_id}", type_at) from None
        if any(dim < 1 for dim in dims):
            raise cursor.fail(f"tensor {name!r} has an empty dimension {dims}", dims_at)
        # Multiplying unbounded u64s stays exact in Python; the size check below bounds them.
        elements = prod(dims)
        if dims[0] % block_size:
            raise cursor.fail(
                f"tensor {name!r} has rows of {dims[0]} elements, not a multiple of the "
                f"{ggml_type.name} block size {block_size}",
                dims_at,
            )
        if offset % alignment:
            raise cursor.fail(
                f"tensor {name!r} data offset {offset} is not a multiple of the alignment "
                f"{alignment}",
                type_at + 4,
            )
        nbytes = elements // block_size * type_size
        # ggml stores the fastest-moving dimension first; numpy wants it last
        raw_infos.append((name, tuple(reversed(dims)), ggml_type, offset, nbytes, start))

    data_start = -(-cursor.pos // alignment) * alignment
    data_size = file_size - data_start
    tensors = []
    for name, shape, ggml_type, offset, nbytes, info_at in raw_infos:
        if offset > data_size or nbytes > data_size - offset:
            raise cursor.fail(
                f"tensor {name!r} data ({nbytes} bytes at data offset {offset}) lies past the end "
                f"of the file: the data section holds {max(data_size, 0)} bytes",
                info_at,
            )
        tensors.append(TensorInfo(name, shape, ggml_type, data_start + offset, nbytes))
    return GGUFHeader(
        path=path,
        version=version,
        file_size=file_size,
        metadata=metadata,
        metadata_types=metadata_types,
        tensors=tuple(tensors),
        alignment=alignment,
        data_start=data_start,
    )


def _check_count(cursor: _Cursor, what: str, count: int, cap: int, min_size: int, at: int) -> None:
    if count > cap:
        raise cursor.fail(f"absurd {what} count {count} (at most {cap})", at)
    remaining = cursor.size - cursor.pos
    if count * min_size > remaining:
        raise cursor.fail(
            f"truncated file: {count} {what} entries need at least {count * min_size} bytes but "
            f"only {remaining} remain",
            at,
        )


def _read_value(cursor: _Cursor, key: str, value_type: int) -> tuple[Any, tuple[int, ...]]:
    """One metadata value and its type (`(type,)`, or `(ARRAY, element type)`)."""
    if value_type in _SCALAR_FORMATS:
        return cursor.scalar(_SCALAR_FORMATS[value_type], f"the value of {key!r}"), (value_type,)
    if value_type == GGUFValueType.STRING:
        return cursor.string(f"the value of {key!r}"), (value_type,)
    if value_type != GGUFValueType.ARRAY:
        raise cursor.fail(f"metadata {key!r} has unknown value type {value_type}", cursor.pos - 4)
    element_type = cursor.u32(f"the element type of array {key!r}")
    count_at = cursor.pos
    count = cursor.u64(f"the length of array {key!r}")
    remaining = cursor.size - cursor.pos
    if element_type in _NUMPY_TYPES:
        width = struct.calcsize(_SCALAR_FORMATS[element_type])
        if count > MAX_ARRAY_LENGTH or count * width > remaining:
            raise cursor.fail(
                f"array {key!r} claims {count} elements of {width} bytes but only {remaining} "
                "bytes remain in the file",
                count_at,
            )
        # copied out at once: a view would keep the file's memory map from closing
        values = np.frombuffer(
            cursor.buffer, dtype=_NUMPY_TYPES[element_type], count=count, offset=cursor.pos
        ).copy()
        cursor.pos += count * width
        if element_type == GGUFValueType.BOOL:
            values = values.astype(bool)
        return values.tolist(), (value_type, element_type)
    if element_type == GGUFValueType.STRING:
        # each string is at least its 8-byte length
        if count > MAX_ARRAY_LENGTH or count * 8 > remaining:
            raise cursor.fail(
                f"array {key!r} claims {count} strings but only {remaining} bytes remain in "
                "the file",
                count_at,
            )
        strings = [cursor.string(f"element {i} of array {key!r}") for i in range(count)]
        return strings, (value_type, element_type)
    raise cursor.fail(
        f"array {key!r} has element type {element_type}, which is not supported "
        "(nested arrays are not)",
        count_at - 4,
    )
