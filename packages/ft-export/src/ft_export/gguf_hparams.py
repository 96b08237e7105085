"""The metadata (and the generated tensors) of a GGUF file, as llama.cpp's converter writes them.

Each function mirrors a part of llama.cpp's `convert_hf_to_gguf.py` (its `conversion/` package):
`TextModel.set_gguf_parameters` for the decoder keys and rope scaling, `LlamaModel`'s
`rope_freqs` for Llama 3's rope scaling, `Phi3MiniModel`'s LongRoPE factors, and the Gemma 2/3
keys. What llama.cpp reads but its converter leaves to defaults is written only where the model
differs from that default (Gemma's sliding-window layer pattern).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from gguf import GGUFWriter, RopeScalingType


class GGUFExportError(ValueError):
    """A model ft cannot write as GGUF, with the reason and what to do."""


def rope_parameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model's rope settings in one dict, as llama.cpp's converter gathers them: the
    `rope_parameters` (transformers 5) or `rope_scaling` of config.json (the full-attention
    entry where there is one per attention type), with `rope_theta`, `rope_type`,
    `partial_rotary_factor` and `original_max_position_embeddings` filled from the top level."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope = dict(rope.get("full_attention", rope))
    if "rope_type" not in rope and "type" in rope:
        rope["rope_type"] = rope["type"]
    for key in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings"):
        if key not in rope and config.get(key) is not None:
            rope[key] = config[key]
    return rope


def rope_kind(config: Mapping[str, Any]) -> str:
    return str(rope_parameters(config).get("rope_type") or "default").lower()


def _required(rope: Mapping[str, Any], key: str, kind: str) -> Any:
    if rope.get(key) is None:
        raise GGUFExportError(
            f"config.json's {kind} rope scaling has no {key!r}, which llama.cpp needs; add it "
            "to config.json (rope_parameters or rope_scaling) and export again"
        )
    return rope[key]


def add_rope_scaling(writer: GGUFWriter, config: Mapping[str, Any], arch: str) -> None:
    """`rope.scaling.*` as llama.cpp's `TextModel.set_gguf_parameters` writes them.

    linear and YaRN are keys; Llama 3's scaling is the `rope_freqs` tensor (`extra_tensors`);
    LongRoPE is Phi-3's factor tensors. Anything else is refused with what to do."""
    rope = rope_parameters(config)
    kind = rope_kind(config)
    if kind == "default":
        return
    if kind == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(_required(rope, "factor", kind)))
    elif kind == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(_required(rope, "factor", kind)))
        writer.add_rope_scaling_orig_ctx_len(
            int(_required(rope, "original_max_position_embeddings", kind))
        )
        if rope.get("extrapolation_factor") is not None:
            writer.add_rope_scaling_yarn_ext_factor(float(rope["extrapolation_factor"]))
        attn_factor = rope.get("attention_factor", rope.get("attn_factor"))
        if attn_factor is not None:
            writer.add_rope_scaling_yarn_attn_factor(float(attn_factor))
        if rope.get("beta_fast") is not None:
            writer.add_rope_scaling_yarn_beta_fast(float(rope["beta_fast"]))
        if rope.get("beta_slow") is not None:
            writer.add_rope_scaling_yarn_beta_slow(float(rope["beta_slow"]))
    elif kind == "llama3" and arch == "llama":
        pass  # the rope_freqs tensor
    elif kind in ("longrope", "su") and arch == "phi3":
        pass  # Phi-3's own keys and factor tensors
    else:
        raise GGUFExportError(
            f"rope scaling {kind!r} on a {config.get('model_type')!r} model is not something "
            "llama.cpp's converter writes (ft writes linear and yarn everywhere, llama3 for "
            "Llama/Mistral, longrope for Phi-3); export `hf` instead"
        )


def llama3_rope_factors(config: Mapping[str, Any]) -> np.ndarray:
    """The `rope_freqs` tensor of a Llama 3 rope scaling: llama.cpp's
    `LlamaModel.generate_extra_tensors`, in float32 as its torch code computes it."""
    rope = rope_parameters(config)
    base = np.float32(rope.get("rope_theta", 10000.0))
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = np.float32(1.0) / base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    factor = float(rope.get("factor", 8.0))
    low_freq_factor = float(rope.get("low_freq_factor", 1.0))
    high_freq_factor = float(rope.get("high_freq_factor", 4.0))
    old_context_len = float(rope.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = np.float32(old_context_len / low_freq_factor)
    high_freq_wavelen = np.float32(old_context_len / high_freq_factor)
    wavelen = np.float32(2 * math.pi) / freqs
    smooth = (np.float32(old_context_len) / wavelen - np.float32(low_freq_factor)) / np.float32(
        high_freq_factor - low_freq_factor
    )
    between = np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth)
    factors = np.where(
        wavelen < high_freq_wavelen,
        np.float32(1),
        np.where(wavelen > low_freq_wavelen, np.float32(factor), between),
    )
    return factors.astype(np.float32)


def _rope_dims(config: Mapping[str, Any]) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return int(head_dim * (rope_parameters(config).get("partial_rotary_factor") or 1.0))


def _phi3_longrope(config: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Phi-3's LongRoPE factor tensors, checked as llama.cpp's `Phi3MiniModel` checks them."""
    rope = rope_parameters(config)
    long_factors, short_factors = rope.get("long_factor"), rope.get("short_factor")
    if not long_factors:
        return []
    if short_factors is None or len(long_factors) != len(short_factors):
        raise GGUFExportError("config.json's longrope needs long_factor and short_factor alike")
    rope_dims = _rope_dims(config)
    if len(long_factors) * 2 != rope_dims:
        raise GGUFExportError(
            f"config.json's longrope factors have {len(long_factors)} entries; the rotary "
            f"dimensions ({rope_dims}) need {rope_dims // 2}"
        )
    return [
        ("rope_factors_long.weight", np.asarray(long_factors, dtype=np.float32)),
        ("rope_factors_short.weight", np.asarray(short_factors, dtype=np.float32)),
    ]


def _phi3_attn_factor(config: Mapping[str, Any]) -> float:
    """LongRoPE's attention factor as llama.cpp's converter computes it (from the context
    lengths; a config's own `attention_factor` is not read)."""
    original = int(
        _required(rope_parameters(config), "original_max_position_embeddings", "longrope")
    )
    scale = config["max_position_embeddings"] / original
    return math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0


def generated_tensors(config: Mapping[str, Any], arch: str) -> list[tuple[str, np.ndarray]]:
    """The tensors llama.cpp's converter makes from config.json (not from the weights):
    Llama 3's `rope_freqs`, Phi-3's LongRoPE factors. (GGUF name, float32 values)."""
    if arch == "llama" and rope_kind(config) == "llama3":
        return [("rope_freqs.weight", llama3_rope_factors(config))]
    if arch == "phi3":
        return _phi3_longrope(config)
    return []


def _layer_pattern(config: Mapping[str, Any], default_period: int) -> list[bool] | None:
    """Gemma's per-layer sliding-window flags, when they are not llama.cpp's default for the
    architecture (every `default_period`-th layer global, the others local)."""
    layer_types = config.get("layer_types")
    if not layer_types:
        return None
    flags = [kind == "sliding_attention" for kind in layer_types]
    default = [i % default_period < default_period - 1 for i in range(len(flags))]
    return None if flags == default else flags


def decoder_hparams(
    writer: GGUFWriter, config: Mapping[str, Any], arch: str
) -> list[tuple[str, np.ndarray]]:
    """The keys of a Llama-like decoder (llama, qwen2/3, phi3, gemma 1/2/3) and the tensors
    llama.cpp generates for it; returns those tensors as (GGUF name, float32 values)."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    rope = rope_parameters(config)
    rope_dims = _rope_dims(config)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(float(rope.get("rope_theta") or 10000.0))
    writer.add_rope_dimension_count(rope_dims)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    add_rope_scaling(writer, config, arch)
    extra = generated_tensors(config, arch)
    if arch == "phi3":
        if rope.get("original_max_position_embeddings") is not None:
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        # llama.cpp tells Phi-4 from Phi-3 by a zero sliding window
        writer.add_sliding_window(int(config.get("sliding_window") or 0))
        if extra:
            writer.add_rope_scaling_attn_factors(_phi3_attn_factor(config))
    if arch == "gemma2":
        for key, add in (
            ("attn_logit_softcapping", writer.add_attn_logit_softcapping),
            ("final_logit_softcapping", writer.add_final_logit_softcapping),
        ):
            if config.get(key) is not None:
                add(float(config[key]))
        if config.get("sliding_window") is not None:
            writer.add_sliding_window(int(config["sliding_window"]))
        if (pattern := _layer_pattern(config, 2)) is not None:
            writer.add_sliding_window_pattern(pattern)
    if arch == "gemma3":
        if config.get("attn_logit_softcapping") is not None:
            raise GGUFExportError(
                "this Gemma 3 model soft-caps attention scores, which llama.cpp's gemma3 does "
                "not; export `hf` instead"
            )
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
        if config.get("sliding_window_pattern") != 1 and config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
        local = (config.get("rope_parameters") or {}).get("sliding_attention", {}).get(
            "rope_theta"
        ) or config.get("rope_local_base_freq")
        if local is not None:
            writer.add_rope_freq_base_swa(float(local))
        if (pattern := _layer_pattern(config, 6)) is not None:
            writer.add_sliding_window_pattern(pattern)
    return extra


def gpt2_hparams(
    writer: GGUFWriter, config: Mapping[str, Any], arch: str
) -> list[tuple[str, np.ndarray]]:
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"])
    writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
    writer.add_block_count(config["n_layer"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
    writer.add_vocab_size(config["vocab_size"])
    return []


def gemma_notes(config: Mapping[str, Any]) -> list[str]:
    """What llama.cpp assumes about a Gemma 2/3 that this model does otherwise."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    scalar = config.get("query_pre_attn_scalar")
    if scalar is not None and scalar != head_dim:
        return [
            f"llama.cpp scales Gemma's attention scores by 1/sqrt(head_dim={head_dim}) (1/sqrt("
            f"hidden/heads) for the 27B); this model's query_pre_attn_scalar is {scalar}"
        ]
    return []
