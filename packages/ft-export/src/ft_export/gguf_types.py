"""The GGUF types ft writes, and which tensor gets which type, as llama.cpp decides it.

A plain type (`f16`, `q8_0`, ...) gives every 2-D weight that type. A K-quant recipe (`q4_k_m`,
`q5_k_m`, `q6_k`) mixes types per tensor exactly as `llama-quantize` does without an importance
matrix (llama.cpp src/llama-quant.cpp, `llama_tensor_get_type`): the output head (or the tied
token embeddings) gets Q6_K, half of the value projections and of the FFN down projections get
Q6_K in the _M recipes (`use_more_bits`: the first and last eighth of the layers and every third
in between), the rest the recipe's type, and a tensor whose rows do not split into 256-value
super-blocks falls back to llama.cpp's 32-value type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
F16 when not even that fits).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf.quants import quantize

from ft_export.kquants import quantize_k

Q = GGMLQuantizationType


@dataclass(frozen=True)
class GGUFType:
    """One `--quant` choice: the type of the 2-D weights and general.file_type. What each costs
    in size and quality is in `ft_export.quant_costs`."""

    weights: GGMLQuantizationType
    file_type: LlamaFileType
    recipe: str | None = None
    """llama.cpp's per-tensor mix (`q4_k_m`, `q5_k_m`, `q6_k`); None: one type for all."""


GGUF_TYPES: dict[str, GGUFType] = {
    "f32": GGUFType(Q.F32, LlamaFileType.ALL_F32),
    "f16": GGUFType(Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": GGUFType(Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": GGUFType(Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q6_k": GGUFType(Q.Q6_K, LlamaFileType.MOSTLY_Q6_K, "q6_k"),
    "q5_k_m": GGUFType(Q.Q5_K, LlamaFileType.MOSTLY_Q5_K_M, "q5_k_m"),
    "q5_1": GGUFType(Q.Q5_1, LlamaFileType.MOSTLY_Q5_1),
    "q5_0": GGUFType(Q.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "q4_k_m": GGUFType(Q.Q4_K, LlamaFileType.MOSTLY_Q4_K_M, "q4_k_m"),
    "q4_1": GGUFType(Q.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "q4_0": GGUFType(Q.Q4_0, LlamaFileType.MOSTLY_Q4_0),
}
"""The GGUF types ft writes, from most to fewest bits per weight."""

_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
"""llama.cpp's `tensor_type_fallback` for rows that are not whole 256-value super-blocks."""

_K_TYPES = {Q.Q4_K: "q4_K", Q.Q5_K: "q5_K", Q.Q6_K: "q6_K"}

_LAYER = re.compile(r"blk\.(\d+)\.")


def _block_size(qtype: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def _use_more_bits(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's `tensor_allows_quantization` for the architectures ft writes."""
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and name not in ("position_embd.weight", "token_types.weight")
    )


def _llama_order(name: str) -> tuple[int, str]:
    """llama.cpp's `weight_name_comparer`: by layer (non-layer tensors first), then by name."""
    match = _LAYER.match(name)
    return (int(match.group(1)) if match else -1, name)


def tensor_types(
    gguf_type: str, tensors: Sequence[tuple[str, tuple[int, ...]]], n_layers: int
) -> dict[str, GGMLQuantizationType]:
    """The type of each tensor (`(gguf name, numpy shape)`) in a `gguf_type` file."""
    kind = GGUF_TYPES[gguf_type]
    if kind.recipe is None:
        return {name: _plain_type(kind.weights, shape) for name, shape in tensors}
    names = {name for name, _ in tensors}
    tied = "output.weight" not in names
    n_attn_v = sum(1 for name in names if "attn_v.weight" in name or "attn_qkv.weight" in name)
    i_attn_v = i_ffn_down = 0
    types: dict[str, GGMLQuantizationType] = {}
    for name, shape in sorted(tensors, key=lambda item: _llama_order(item[0])):
        if not _quantizable(name, shape):
            types[name] = Q.F32 if len(shape) < 2 else Q.F16
            continue
        qtype = kind.weights
        columns = shape[-1]
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            qtype = Q.Q8_0 if columns % _block_size(qtype) else Q.Q6_K
        elif "attn_v.weight" in name or "attn_qkv.weight" in name:
            if kind.recipe in ("q4_k_m", "q5_k_m") and _use_more_bits(i_attn_v, n_attn_v):
                qtype = Q.Q6_K
            i_attn_v += 1
        elif "ffn_down" in name:
            if kind.recipe in ("q4_k_m", "q5_k_m") and _use_more_bits(i_ffn_down, n_layers):
                qtype = Q.Q6_K
            i_ffn_down += 1
        if columns % _block_size(qtype):
            qtype = _FALLBACK.get(qtype, qtype)
            if columns % _block_size(qtype):
                qtype = Q.F16
        types[name] = qtype
    return types


def _plain_type(weights: GGMLQuantizationType, shape: tuple[int, ...]) -> GGMLQuantizationType:
    if len(shape) < 2 or weights == Q.F32:
        return Q.F32  # norms and biases stay f32, as in llama.cpp
    if shape[-1] % _block_size(weights):
        return Q.F16
    return weights


def encode(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """`values` (float32) as the bytes (or f32/f16 array) of a `qtype` tensor."""
    if qtype == Q.F32:
        return values.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return values.astype(np.float16)
    if qtype in _K_TYPES:
        return quantize_k(values, _K_TYPES[qtype])
    return quantize(values, qtype)
