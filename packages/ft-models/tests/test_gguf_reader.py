"""Malformed GGUF files are rejected at once (< 1 s), in bounded memory, with an error naming
the file, the byte offset and what is wrong. Needs only numpy and gguf."""

from __future__ import annotations

import random
import struct
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from ft_models.gguf import GGUFError, import_gguf, read_gguf_header, validate_gguf

STRING, ARRAY, UINT8, UINT32 = 8, 9, 0, 4


def header(version: int = 3, tensors: int = 0, kvs: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


def string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def tensor_info(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return (
        string(name)
        + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def one_tensor_file(offset: int = 0, data_bytes: int = 128) -> bytes:
    """One F32 tensor of 32 values, its data `data_bytes` long, at data `offset`."""
    head = header(tensors=1) + tensor_info("w", [32], 0, offset)
    head += b"\0" * (-len(head) % 32)
    return head + b"\1" * data_bytes


def rejected_within_a_second(path: Path) -> GGUFError:
    """Read the header in a daemon thread: a hang fails the test instead of freezing it."""
    outcome: dict[str, BaseException] = {}

    def read() -> None:
        try:
            validate_gguf(path)
        except BaseException as error:
            outcome["error"] = error

    started = time.perf_counter()
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(1.0)
    assert not thread.is_alive(), f"reading {path.name} did not finish within 1 s"
    assert time.perf_counter() - started < 1.0
    error = outcome.get("error")
    assert isinstance(error, GGUFError), f"expected GGUFError, got {error!r}"
    assert error.path == path
    return error


CASES = {
    "bad-magic": (
        b"GGML" + bytes(20),
        "not a GGUF file: it starts with b'GGML', not b'GGUF' (at byte 0)",
    ),
    "version-99": (header(version=99), "unsupported GGUF version 99 (supported: 2, 3) (at byte 4)"),
    "version-1": (header(version=1), "unsupported GGUF version 1 (supported: 2, 3) (at byte 4)"),
    "big-endian": (
        b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
        "big-endian GGUF files are not supported (at byte 4)",
    ),
    # gguf 0.19.0's GGUFReader hangs on this one (49 bytes)
    "array-of-2^63": (
        header(kvs=1) + string("a") + struct.pack("<IIQ", ARRAY, UINT8, 2**63),
        "array 'a' claims 9223372036854775808 elements of 1 bytes but only 0 bytes remain in "
        "the file (at byte 41)",
    ),
    "string-array-of-2^63": (
        header(kvs=1) + string("a") + struct.pack("<IIQ", ARRAY, STRING, 2**63),
        "array 'a' claims 9223372036854775808 strings but only 0 bytes remain in the file (at byte 41)",
    ),
    "huge-tensor-count": (
        header(tensors=2**40),
        "absurd tensor count 1099511627776 (at most 1048576) (at byte 8)",
    ),
    "huge-metadata-count": (
        header(kvs=2**63),
        "absurd metadata count 9223372036854775808 (at most 65536) (at byte 16)",
    ),
    "tensor-count-past-the-end": (
        header(tensors=1000) + bytes(1000),
        "truncated file: 1000 tensor entries need at least 32000 bytes but only 1000 remain (at byte 8)",
    ),
    "huge-key-length": (
        header(kvs=1) + struct.pack("<Q", 2**62) + bytes(8),
        "metadata key #0 claims 4611686018427387904 bytes (more than 65536) (at byte 24)",
    ),
    "string-past-the-end": (
        header(kvs=1) + string("general.name") + struct.pack("<IQ", STRING, 1000) + b"tiny",
        "the value of 'general.name' claims 1000 bytes but only 4 remain in the file (at byte 48)",
    ),
    "truncated-in-a-length": (
        header(kvs=1) + string("a") + struct.pack("<I", UINT32) + b"\3\0",
        "truncated file: the value of 'a' needs 4 bytes but only 2 remain of 39 (at byte 37)",
    ),
    "truncated-header": (
        b"GGUF\3\0\0\0",
        "truncated file: 8 bytes is shorter than a GGUF header (24) (at byte 0)",
    ),
    "empty": (b"", "empty file (at byte 0)"),
    "unknown-value-type": (
        header(kvs=1) + string("a") + struct.pack("<I", 13),
        "metadata 'a' has unknown value type 13 (at byte 33)",
    ),
    "nested-array": (
        header(kvs=1) + string("a") + struct.pack("<IIQ", ARRAY, ARRAY, 1),
        "array 'a' has element type 9, which is not supported (nested arrays are not) (at byte 37)",
    ),
    "invalid-utf8-key": (
        header(kvs=1) + string(b"\xff\xfe") + struct.pack("<IB", UINT8, 1),
        "metadata key #0 is not valid UTF-8 (invalid start byte) (at byte 32)",
    ),
    "duplicate-key": (
        header(kvs=2) + (string("a") + struct.pack("<IB", UINT8, 1)) * 2,
        "duplicate metadata key 'a' (at byte 38)",
    ),
    "too-many-dims": (
        header(tensors=1) + tensor_info("w", [1] * 7),
        "tensor 'w' has 7 dimensions (1 to 4 allowed) (at byte 37)",
    ),
    "unknown-tensor-type": (
        header(tensors=1) + tensor_info("w", [32], ggml_type=99),
        "tensor 'w' has unknown ggml type 99 (at byte 45)",
    ),
    "bad-block-size": (
        header(tensors=1) + tensor_info("w", [33], ggml_type=2),
        "tensor 'w' has rows of 33 elements, not a multiple of the Q4_0 block size 32 (at byte 37)",
    ),
    "absurd-dimensions": (
        header(tensors=1) + tensor_info("w", [2**32, 2**32, 2**32, 2**32]) + bytes(7),
        "tensor 'w' data (1361129467683753853853498429727072845824 bytes at data offset 0) lies past the end "
        "of the file: the data section holds 0 bytes (at byte 24)",
    ),
    "misaligned-offset": (
        header(tensors=1) + tensor_info("w", [32], offset=4),
        "tensor 'w' data offset 4 is not a multiple of the alignment 32 (at byte 49)",
    ),
    "bad-alignment": (
        header(kvs=1) + string("general.alignment") + struct.pack("<II", UINT32, 24),
        "general.alignment 24 is not a power of two up to 65536 (at byte 57)",
    ),
    "tensor-offset-past-eof": (
        one_tensor_file(offset=4096),
        "tensor 'w' data (128 bytes at data offset 4096) lies past the end of the file: the data "
        "section holds 128 bytes (at byte 24)",
    ),
    "tensor-data-truncated": (
        one_tensor_file(data_bytes=100),
        "tensor 'w' data (128 bytes at data offset 0) lies past the end of the file: the data "
        "section holds 100 bytes (at byte 24)",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_files_are_rejected_quickly_with_exact_errors(tmp_path, case) -> None:
    data, expected = CASES[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)

    error = rejected_within_a_second(path)

    assert str(error) == f"{path}: {expected}"


def test_the_array_that_hangs_gguf_reader_is_49_bytes_and_import_refuses_it(tmp_path) -> None:
    path = tmp_path / "hang.gguf"
    path.write_bytes(CASES["array-of-2^63"][0])
    assert path.stat().st_size == 49
    with pytest.raises(GGUFError, match="claims 9223372036854775808 elements"):
        import_gguf(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hang.gguf"]


def test_missing_files_and_folders_are_named(tmp_path) -> None:
    with pytest.raises(GGUFError) as error:
        validate_gguf(tmp_path / "nope.gguf")
    assert str(error.value) == f"{tmp_path / 'nope.gguf'}: no such file"
    with pytest.raises(GGUFError) as error:
        validate_gguf(tmp_path)
    assert str(error.value) == f"{tmp_path}: is a directory, not a GGUF file"


def small_valid_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_token_list(["a", "b", "c"])
    writer.add_array("llama.numbers", [1, 2, 3])
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_every_truncation_of_a_valid_file_is_rejected(tmp_path) -> None:
    data = small_valid_gguf(tmp_path / "ok.gguf").read_bytes()
    header_ = read_gguf_header(tmp_path / "ok.gguf")
    assert header_.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    assert header_.metadata["llama.numbers"] == [1, 2, 3]
    assert [t.name for t in header_.tensors] == ["token_embd.weight", "output_norm.weight"]

    cut = tmp_path / "cut.gguf"
    started = time.perf_counter()
    header_end = header_.data_start
    for size in [*range(header_end), *range(header_end, len(data), 16)]:
        cut.write_bytes(data[:size])
        with pytest.raises(GGUFError):
            read_gguf_header(cut)
    assert time.perf_counter() - started < 5.0


def test_random_corruption_is_a_gguf_error_or_a_valid_header(tmp_path) -> None:
    data = small_valid_gguf(tmp_path / "ok.gguf").read_bytes()
    header_end = read_gguf_header(tmp_path / "ok.gguf").data_start
    rng = random.Random(0)
    path = tmp_path / "corrupt.gguf"
    started = time.perf_counter()
    outcomes = {"error": 0, "valid": 0}
    for _ in range(500):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(header_end)
            corrupt[position] = rng.randrange(256)
        path.write_bytes(bytes(corrupt))
        try:
            read_gguf_header(path)
            outcomes["valid"] += 1
        except GGUFError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100
    assert time.perf_counter() - started < 10.0
