"""ft's K-quants against llama.cpp's reference quantizers (test vectors made with its C code,
see make_quant_vectors.py), read back by gguf-py's independent dequantizers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file

from ft_export.kquants import quantize_k

REFERENCE = Path(__file__).parent / "data" / "quant-reference.safetensors"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_file(str(REFERENCE))


@pytest.mark.parametrize("kind", ["q4_K", "q5_K", "q6_K"])
def test_k_quants_are_bit_identical_to_llama_cpp(
    reference: dict[str, np.ndarray], kind: str
) -> None:
    assert np.array_equal(quantize_k(reference["input"], kind), reference[kind])


@pytest.mark.parametrize("kind", ["q8_0", "q5_0", "q5_1", "q4_0", "q4_1"])
def test_gguf_py_block_quants_are_bit_identical_to_llama_cpp(
    reference: dict[str, np.ndarray], kind: str
) -> None:
    """The fallbacks of the _M recipes (Q5_0, Q5_1, Q8_0) come from gguf-py: same bytes too."""
    with np.errstate(over="ignore"):
        ours = quantize(reference["input"], GGMLQuantizationType[kind.upper()])
    assert np.array_equal(ours, reference[kind])


@pytest.mark.parametrize(("kind", "bound"), [("q4_K", 0.075), ("q5_K", 0.038), ("q6_K", 0.019)])
def test_k_quants_read_back_within_their_error(
    reference: dict[str, np.ndarray], kind: str, bound: float
) -> None:
    """Gaussian weights (rows 0-2 of the vectors) come back from gguf-py's dequantizer within
    each type's known error: about 4.5, 5.5 and 6.5 bits' worth."""
    weights = reference["input"][:3]
    back = dequantize(quantize_k(weights, kind), GGMLQuantizationType[kind.upper()])
    error = np.linalg.norm(back - weights) / np.linalg.norm(weights)
    assert error < bound


def test_rows_must_hold_whole_super_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_k(np.zeros((2, 576), dtype=np.float32), "q4_K")
