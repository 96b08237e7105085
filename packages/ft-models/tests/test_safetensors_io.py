"""ft_models.safetensors_io: what it writes `safetensors` reads, what `safetensors` writes it
reads (bfloat16 too), and a header that does not fit its file is an error naming the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ft_models.safetensors_io import (
    SafetensorsError,
    SafetensorsWriter,
    iter_tensors,
    read_header,
    read_tensors,
    write_tensors,
)

TENSORS = {
    "b.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    "a.half": np.linspace(-1, 1, 6, dtype=np.float16),
    "c.ids": np.array([[1, -2], [3, 4]], dtype=np.int64),
    "d.mask": np.array([True, False, True]),
    "e.empty": np.zeros((0, 4), dtype=np.float32),
}


def test_round_trip_with_safetensors_itself(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = write_tensors(tmp_path / "t.safetensors", TENSORS, metadata={"format": "pt"})
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    theirs = load_file(str(path))
    assert sorted(theirs) == sorted(TENSORS)
    for name, values in TENSORS.items():
        np.testing.assert_array_equal(theirs[name], values)
        assert theirs[name].dtype == values.dtype
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "pt"}

    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert list(header.tensors) == sorted(TENSORS)  # written in name order
    assert header.tensors["b.weight"].shape == (3, 4) and header.tensors["b.weight"].dtype == "F32"
    assert header.data_start % 8 == 0  # the data starts aligned, as safetensors writes it

    save_file(TENSORS, str(tmp_path / "theirs.safetensors"))
    ours = read_tensors(tmp_path / "theirs.safetensors")
    assert ours["a.half"].dtype == np.float32  # floats are widened to float32
    np.testing.assert_array_equal(ours["a.half"], TENSORS["a.half"].astype(np.float32))
    assert ours["c.ids"].dtype == np.int64 and ours["d.mask"].dtype == np.bool_
    assert read_tensors(tmp_path / "theirs.safetensors", ["c.ids"]).keys() == {"c.ids"}
    with pytest.raises(SafetensorsError, match=r"theirs\.safetensors: no tensor nope"):
        read_tensors(tmp_path / "theirs.safetensors", ["nope"])


def test_bfloat16_is_read_exactly_as_float32(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    values = torch.randn(5, 7).to(torch.bfloat16)
    save_file({"w": values}, str(tmp_path / "bf16.safetensors"))
    [(name, read)] = list(iter_tensors(tmp_path / "bf16.safetensors"))
    assert name == "w" and read.dtype == np.float32
    np.testing.assert_array_equal(read, values.float().numpy())


def test_the_streaming_writer_checks_each_tensor(tmp_path: Path) -> None:
    layout = [("x", "F32", (2,)), ("y", "BF16", (1,))]
    with SafetensorsWriter(tmp_path / "s.safetensors", layout) as writer:
        with pytest.raises(SafetensorsError, match=r"got y \(2,\), expected x \(2,\)"):
            writer.write("y", np.zeros(2, np.float32))
        with pytest.raises(SafetensorsError, match="tensor x is float64, and the header says F32"):
            writer.write("x", np.zeros(2, np.float64))
        writer.write("x", np.ones(2, np.float32))
        writer.write("y", np.array([0x3F80], dtype=np.uint16))  # 1.0 in bfloat16
    np.testing.assert_array_equal(read_tensors(tmp_path / "s.safetensors")["y"], [1.0])
    short = SafetensorsWriter(tmp_path / "short.safetensors", layout)
    short.write("x", np.ones(2, np.float32))
    with pytest.raises(SafetensorsError, match="1 tensors never written"):
        short.close()


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = write_tensors(tmp_path / "t.safetensors", {"old": np.ones(2, np.float32)})
    with pytest.raises(SafetensorsError, match="cannot hold a numpy complex64 tensor"):
        write_tensors(path, {"new": np.ones(2, np.complex64)})
    assert list(read_tensors(path)) == ["old"]
    assert list(tmp_path.iterdir()) == [path]


def _file(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> Path:
    encoded = json.dumps(header).encode()
    size = len(encoded) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + encoded + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        ({}, b"", 10**12, r"header says it is 1000000000000 bytes long, and the file has only"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"1234", None,
         r"tensor 'w': data_offsets \[0, 8\] lie outside the file's 4 bytes of data"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 2]}}, b"12345678", None,
         r"data_offsets \[4, 2\] lie outside"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"12345678", None,
         r"8 bytes for a F32 tensor of shape \(3,\), which needs 12"),
        ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"12345678", None,
         r"unknown dtype 'Q4'"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"12345678", None,
         r"shape \[-2\] is not a list of sizes"),
        ({"__metadata__": {"n": 1}}, b"", None, r"__metadata__ must map strings to strings"),
    ],
)  # fmt: skip
def test_a_header_that_does_not_fit_its_file_is_refused(
    tmp_path: Path, header: dict, data: bytes, length: int | None, message: str
) -> None:
    path = _file(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(SafetensorsError, match=message) as raised:
        read_tensors(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_files_that_are_not_safetensors(tmp_path: Path) -> None:
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match=r"tiny: not a safetensors file \(shorter than 8"):
        read_header(tmp_path / "tiny")
    (tmp_path / "junk").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    with pytest.raises(SafetensorsError, match="junk: the header is not JSON"):
        read_header(tmp_path / "junk")
    (tmp_path / "list").write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(SafetensorsError, match="list: the header is not a JSON object"):
        read_header(tmp_path / "list")
