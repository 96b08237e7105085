"""What each supported architecture needs to become a Hugging Face model again.

An `Architecture` is a small table: the Hugging Face parameter names of the model, which GGUF
metadata keys become which config keys, and the few tensors llama.cpp's converter changed on
the way (llama's rotary permutation of q/k, Gemma's `norm + 1`, GPT-2's transposed Conv1D
weights), each undone exactly as transformers' own GGUF loader
(`transformers/modeling_gguf_pytorch_utils.py`) undoes it.

GGUF names are found from the Hugging Face names through gguf-py's `TensorNameMap` (the map
llama.cpp's converter itself uses), the same way transformers builds its map from a model's
state dict; here the state dict's names are listed in the table, so no model (and no torch) is
needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf.constants import MODEL_ARCH_NAMES
from gguf.tensor_mapping import get_tensor_name_map

from ft_models.gguf.reader import GGUFError, GGUFHeader, TensorInfo


@dataclass(frozen=True)
class Transform:
    """Undo one change llama.cpp's converter made to a tensor."""

    apply: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]
    """(float32 values as stored, the HF config) -> the values Hugging Face expects."""
    transposes: bool = False
    check: Callable[[tuple[int, ...], Mapping[str, Any]], str | None] | None = None
    """What is wrong with a tensor of this shape under this config, if anything."""


def reverse_llama_permutation(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `LlamaModel.permute` of q_proj/k_proj rows.

    llama.cpp interleaves each head's rotary halves (`(n_head, 2, d/2) -> (n_head, d/2, 2)`) so
    its rope can rotate adjacent pairs; Hugging Face rotates the two halves. Same arithmetic as
    transformers' `LlamaTensorProcessor._reverse_permute_weights`.
    """
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def _unpermute_q_values(weights: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    return reverse_llama_permutation(weights, config["num_attention_heads"])


def _unpermute_k_values(weights: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    # k has one head per key/value head (grouped-query attention)
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    return reverse_llama_permutation(weights, heads)


def _check_heads(key: str) -> Callable[[tuple[int, ...], Mapping[str, Any]], str | None]:
    def check(shape: tuple[int, ...], config: Mapping[str, Any]) -> str | None:
        heads = config.get(key) or config.get("num_attention_heads")
        if not isinstance(heads, int) or heads < 1 or shape[0] % (2 * heads):
            return f"{shape[0]} rows cannot be split into {heads!r} rotary heads ({key})"
        return None

    return check


def _subtract_one_values(weights: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    # Gemma scales by (1 + w); llama.cpp stores w + 1 so its norm is a plain multiply.
    return weights - 1


def _transpose_values(weights: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    # GPT-2's Conv1D keeps (in, out); llama.cpp stores (out, in) like a Linear.
    return np.ascontiguousarray(weights.T)


_UNPERMUTE_Q = Transform(_unpermute_q_values, check=_check_heads("num_attention_heads"))
_UNPERMUTE_K = Transform(_unpermute_k_values, check=_check_heads("num_key_value_heads"))
_SUBTRACT_ONE = Transform(_subtract_one_values)
_TRANSPOSE = Transform(_transpose_values, transposes=True)

# GGUF key suffixes shared by the llama-like decoders: `<arch>.<suffix>` -> HF config key.
_DECODER_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}

_DECODER_LAYER = (
    "model.layers.{bid}.input_layernorm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight",
    "model.layers.{bid}.self_attn.k_proj.weight",
    "model.layers.{bid}.self_attn.v_proj.weight",
    "model.layers.{bid}.self_attn.o_proj.weight",
    "model.layers.{bid}.post_attention_layernorm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight",
    "model.layers.{bid}.mlp.up_proj.weight",
    "model.layers.{bid}.mlp.down_proj.weight",
)
_DECODER_GLOBALS = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


@dataclass(frozen=True)
class Architecture:
    """One GGUF architecture and the Hugging Face model it imports as."""

    gguf_name: str
    """`general.architecture` in the file."""
    model_type: str
    hf_class: str
    config_keys: Mapping[str, str]
    """GGUF metadata key (without the `<arch>.` prefix) -> HF config key."""
    global_tensors: tuple[str, ...]
    layer_tensors: tuple[str, ...]
    """HF parameter names; `{bid}` is the layer number."""
    optional_tensors: frozenset[str] = frozenset({"lm_head.weight"})
    """HF names (with `{bid}`) a file may leave out: the output head when it is tied."""
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    """GGUF leaf name (`attn_q.weight`, without `blk.N.`) -> the change to undo."""
    config_defaults: Mapping[str, Any] = field(default_factory=dict)

    def build_config(self, header: GGUFHeader) -> dict[str, Any]:
        """The HF `config.json` contents for this file."""
        metadata = header.metadata
        config: dict[str, Any] = {
            "architectures": [self.hf_class],
            "model_type": self.model_type,
            **self.config_defaults,
        }
        for suffix, hf_key in self.config_keys.items():
            key = f"{self.gguf_name}.{suffix}"
            if key in metadata:
                value = metadata[key]
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise GGUFError(header.path, f"metadata {key} is {value!r}, not a number")
                config[hf_key] = value
        # llama.cpp writes the output projection only when it is not the embedding matrix
        names = {info.name for info in header.tensors}
        config["tie_word_embeddings"] = "output.weight" not in names
        for hf_key, gguf_key in (
            ("bos_token_id", "bos_token_id"),
            ("eos_token_id", "eos_token_id"),
            ("unk_token_id", "unknown_token_id"),
            ("pad_token_id", "padding_token_id"),
        ):
            if f"tokenizer.ggml.{gguf_key}" in metadata:
                config[hf_key] = metadata[f"tokenizer.ggml.{gguf_key}"]
        if "vocab_size" not in config and isinstance(metadata.get("tokenizer.ggml.tokens"), list):
            config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
        if "vocab_size" not in config:
            embeddings = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
            if embeddings is not None:
                config["vocab_size"] = embeddings.shape[0]
        if "rope_theta" in config:
            # transformers 5 reads `rope_parameters`; mlx-lm and transformers 4 read `rope_theta`
            config["rope_parameters"] = {"rope_type": "default", "rope_theta": config["rope_theta"]}
        return config

    def tensor_plan(self, header: GGUFHeader, config: Mapping[str, Any]) -> list[TensorPlan]:
        """Which HF parameter each GGUF tensor becomes, and what to undo on the way. Raises
        `GGUFError` for a tensor with no HF counterpart or a required one that is missing."""
        n_layers = config.get(_layer_key(self))
        # each layer has tensors of its own, so a count beyond the tensors is a corrupt file
        if not isinstance(n_layers, int) or not 1 <= n_layers <= len(header.tensors):
            raise GGUFError(
                header.path,
                f"{self.gguf_name}.block_count is {n_layers!r} for a file of "
                f"{len(header.tensors)} tensors",
            )
        arch = next(a for a, name in MODEL_ARCH_NAMES.items() if name == self.gguf_name)
        name_map = get_tensor_name_map(arch, n_layers)
        hf_for_gguf: dict[str, str] = {}
        optional_hf: set[str] = set()
        templates = [(name, False) for name in self.global_tensors] + [
            (name, True) for name in self.layer_tensors
        ]
        for template, per_layer in templates:
            for bid in range(n_layers) if per_layer else [None]:
                hf_name = template.format(bid=bid) if per_layer else template
                base, _, suffix = hf_name.rpartition(".")
                gguf_base = name_map.get_name(base)
                if gguf_base is None:  # a table error, not a file error
                    raise RuntimeError(f"gguf-py has no {self.gguf_name} tensor for {hf_name}")
                hf_for_gguf[f"{gguf_base}.{suffix}"] = hf_name
                if template in self.optional_tensors:
                    optional_hf.add(hf_name)

        plan = []
        for info in header.tensors:
            hf_name = hf_for_gguf.pop(info.name, None)
            if hf_name is None:
                raise GGUFError(
                    header.path,
                    f"tensor {info.name!r} has no Hugging Face counterpart in a {self.hf_class} "
                    f"with {n_layers} layers"
                    + (
                        " (rope_freqs holds Llama 3.1-style rope scaling, which the import does "
                        "not support)"
                        if info.name.startswith("rope_freqs")
                        else ""
                    ),
                )
            leaf = info.name.split(".", 2)[2] if info.name.startswith("blk.") else info.name
            transform = self.transforms.get(leaf)
            if transform is not None and transform.check is not None:
                problem = transform.check(info.shape, config)
                if problem:
                    raise GGUFError(header.path, f"tensor {info.name!r}: {problem}")
            plan.append(TensorPlan(info, hf_name, transform))
        # what is left was expected and is not in the file
        missing = sorted(g for g, h in hf_for_gguf.items() if h not in optional_hf)
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise GGUFError(header.path, f"missing tensors for a {self.hf_class}: {shown}")
        _check_shapes(header, config, plan)
        return plan


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor, the HF parameter it becomes, and the change to undo on the way."""

    source: TensorInfo
    hf_name: str
    transform: Transform | None

    @property
    def hf_shape(self) -> tuple[int, ...]:
        shape = self.source.shape
        return tuple(reversed(shape)) if self.transform and self.transform.transposes else shape


def _check_shapes(header: GGUFHeader, config: Mapping[str, Any], plan: list[TensorPlan]) -> None:
    """Refuse a file whose metadata contradicts its tensors' shapes.

    The config is built from the metadata, the weights from the tensors; a model whose two
    disagree would be written out whole and fail only when loaded (or, worse, load with the
    wrong number of heads). Only sizes the metadata states are checked.
    """
    sizes = _stated_sizes(config)
    for item in plan:
        leaf = _LAYER_PREFIX.sub("", item.hf_name)
        rule = _SHAPE_RULES.get(leaf)
        if rule is None:
            continue
        try:
            expected = tuple(_size(term, sizes) for term in rule)
        except KeyError:
            continue  # the metadata does not state a size this tensor depends on
        if item.hf_shape != expected:
            used = dict.fromkeys(name for term in rule for name in _SIZE_NAME.findall(term))
            stated = ", ".join(f"{_SIZE_SOURCE[name]}={sizes[name]}" for name in used)
            raise GGUFError(
                header.path,
                f"tensor {item.source.name!r} has shape {list(item.hf_shape)} but the metadata "
                f"({stated}) makes it {list(expected)}: the file contradicts itself, so it is "
                "not imported; convert the model again",
            )


def _size(term: str, sizes: Mapping[str, int]) -> int:
    """`2*ffn` with sizes {"ffn": 64} -> 128: a product of size names and whole numbers."""
    value = 1
    for factor in term.split("*"):
        value *= int(factor) if factor.isdigit() else sizes[factor]
    return value


def _stated_sizes(config: Mapping[str, Any]) -> dict[str, int]:
    """The sizes the metadata states, by the short names of `_SHAPE_RULES`."""
    sizes: dict[str, int] = {}
    for short, keys in _SIZE_KEYS.items():
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                sizes[short] = value
                break
    if "heads" in sizes:
        sizes.setdefault("kv", sizes["heads"])
        if "hd" not in sizes and "hidden" in sizes and sizes["hidden"] % sizes["heads"] == 0:
            sizes["hd"] = sizes["hidden"] // sizes["heads"]
        if "hd" in sizes:
            sizes["q"] = sizes["heads"] * sizes["hd"]
            sizes["k"] = sizes["kv"] * sizes["hd"]
            sizes["qkv"] = sizes["q"] + 2 * sizes["k"]
    if "ffn" not in sizes and "n_embd" in sizes and config.get("model_type") == "gpt2":
        sizes["ffn"] = 4 * sizes["n_embd"]  # GPT-2's n_inner: null means 4 * n_embd
    return sizes


# Short size names -> the config keys that state them (first found wins) and, for messages,
# the GGUF metadata they come from.
_SIZE_KEYS = {
    "vocab": ("vocab_size",),
    "hidden": ("hidden_size", "n_embd"),
    "n_embd": ("n_embd",),
    "ffn": ("intermediate_size", "n_inner"),
    "heads": ("num_attention_heads", "n_head"),
    "kv": ("num_key_value_heads",),
    "hd": ("head_dim",),
    "positions": ("n_positions",),
}
_SIZE_SOURCE = {
    "vocab": "vocab_size",
    "hidden": "embedding_length",
    "ffn": "feed_forward_length",
    "heads": "head_count",
    "kv": "head_count_kv",
    "hd": "head_dim",
    "q": "head_count*head_dim",
    "k": "head_count_kv*head_dim",
    "qkv": "(head_count+2*head_count_kv)*head_dim",
    "positions": "context_length",
}
_SIZE_NAME = re.compile(r"[a-z_]+")
_LAYER_PREFIX = re.compile(r"^(model\.layers|transformer\.h)\.\d+\.")
# Hugging Face parameter (without its layer prefix) -> its shape, as products of sizes.
_SHAPE_RULES: dict[str, tuple[str, ...]] = {
    "model.embed_tokens.weight": ("vocab", "hidden"),
    "lm_head.weight": ("vocab", "hidden"),
    "model.norm.weight": ("hidden",),
    "input_layernorm.weight": ("hidden",),
    "post_attention_layernorm.weight": ("hidden",),
    "pre_feedforward_layernorm.weight": ("hidden",),
    "post_feedforward_layernorm.weight": ("hidden",),
    "self_attn.q_proj.weight": ("q", "hidden"),
    "self_attn.k_proj.weight": ("k", "hidden"),
    "self_attn.v_proj.weight": ("k", "hidden"),
    "self_attn.o_proj.weight": ("hidden", "q"),
    "self_attn.q_proj.bias": ("q",),
    "self_attn.k_proj.bias": ("k",),
    "self_attn.v_proj.bias": ("k",),
    "self_attn.q_norm.weight": ("hd",),
    "self_attn.k_norm.weight": ("hd",),
    "self_attn.qkv_proj.weight": ("qkv", "hidden"),
    "mlp.gate_proj.weight": ("ffn", "hidden"),
    "mlp.up_proj.weight": ("ffn", "hidden"),
    "mlp.gate_up_proj.weight": ("2*ffn", "hidden"),
    "mlp.down_proj.weight": ("hidden", "ffn"),
    # GPT-2 (Conv1D weights are (in, out))
    "transformer.wte.weight": ("vocab", "hidden"),
    "transformer.wpe.weight": ("positions", "hidden"),
    "transformer.ln_f.weight": ("hidden",),
    "transformer.ln_f.bias": ("hidden",),
    "ln_1.weight": ("hidden",),
    "ln_1.bias": ("hidden",),
    "ln_2.weight": ("hidden",),
    "ln_2.bias": ("hidden",),
    "attn.c_attn.weight": ("hidden", "3*hidden"),
    "attn.c_attn.bias": ("3*hidden",),
    "attn.c_proj.weight": ("hidden", "hidden"),
    "attn.c_proj.bias": ("hidden",),
    "mlp.c_fc.weight": ("hidden", "ffn"),
    "mlp.c_fc.bias": ("ffn",),
    "mlp.c_proj.weight": ("ffn", "hidden"),
    "mlp.c_proj.bias": ("hidden",),
}


def _layer_key(arch: Architecture) -> str:
    return next(hf for gguf_key, hf in arch.config_keys.items() if gguf_key == "block_count")


LLAMA = Architecture(
    gguf_name="llama",
    model_type="llama",
    hf_class="LlamaForCausalLM",
    config_keys={**_DECODER_KEYS, "rope.dimension_count": "head_dim"},
    global_tensors=_DECODER_GLOBALS,
    layer_tensors=_DECODER_LAYER,
    transforms={"attn_q.weight": _UNPERMUTE_Q, "attn_k.weight": _UNPERMUTE_K},
)

QWEN2 = Architecture(
    gguf_name="qwen2",
    model_type="qwen2",
    hf_class="Qwen2ForCausalLM",
    config_keys=_DECODER_KEYS,
    global_tensors=_DECODER_GLOBALS,
    layer_tensors=(
        *_DECODER_LAYER,
        "model.layers.{bid}.self_attn.q_proj.bias",
        "model.layers.{bid}.self_attn.k_proj.bias",
        "model.layers.{bid}.self_attn.v_proj.bias",
    ),
)

QWEN3 = Architecture(
    gguf_name="qwen3",
    model_type="qwen3",
    hf_class="Qwen3ForCausalLM",
    # transformers' loader leaves head_dim to Qwen3Config's default (128, right for the
    # released models); the file states it, so it is taken from there.
    config_keys={**_DECODER_KEYS, "attention.key_length": "head_dim"},
    global_tensors=_DECODER_GLOBALS,
    layer_tensors=(
        *_DECODER_LAYER,
        "model.layers.{bid}.self_attn.q_norm.weight",
        "model.layers.{bid}.self_attn.k_norm.weight",
    ),
)

PHI3 = Architecture(
    gguf_name="phi3",
    model_type="phi3",
    hf_class="Phi3ForCausalLM",
    config_keys=_DECODER_KEYS,
    global_tensors=_DECODER_GLOBALS,
    layer_tensors=(
        "model.layers.{bid}.input_layernorm.weight",
        "model.layers.{bid}.self_attn.qkv_proj.weight",
        "model.layers.{bid}.self_attn.o_proj.weight",
        "model.layers.{bid}.post_attention_layernorm.weight",
        "model.layers.{bid}.mlp.gate_up_proj.weight",
        "model.layers.{bid}.mlp.down_proj.weight",
    ),
)

GEMMA2 = Architecture(
    gguf_name="gemma2",
    model_type="gemma2",
    hf_class="Gemma2ForCausalLM",
    config_keys={
        **_DECODER_KEYS,
        "attention.key_length": "head_dim",
        "attention.sliding_window": "sliding_window",
        "attn_logit_softcapping": "attn_logit_softcapping",
        "final_logit_softcapping": "final_logit_softcapping",
    },
    global_tensors=_DECODER_GLOBALS[:2],  # Gemma always ties its output head
    layer_tensors=(
        *_DECODER_LAYER,
        "model.layers.{bid}.pre_feedforward_layernorm.weight",
        "model.layers.{bid}.post_feedforward_layernorm.weight",
    ),
    transforms={
        "output_norm.weight": _SUBTRACT_ONE,
        "attn_norm.weight": _SUBTRACT_ONE,
        "post_attention_norm.weight": _SUBTRACT_ONE,
        "ffn_norm.weight": _SUBTRACT_ONE,
        "post_ffw_norm.weight": _SUBTRACT_ONE,
    },
)

GPT2 = Architecture(
    gguf_name="gpt2",
    model_type="gpt2",
    hf_class="GPT2LMHeadModel",
    config_keys={
        "block_count": "n_layer",
        "context_length": "n_positions",
        "embedding_length": "n_embd",
        "feed_forward_length": "n_inner",
        "attention.head_count": "n_head",
        "attention.layer_norm_epsilon": "layer_norm_epsilon",
    },
    global_tensors=(
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "lm_head.weight",
    ),
    layer_tensors=tuple(
        f"transformer.h.{{bid}}.{module}.{kind}"
        for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
        for kind in ("weight", "bias")
    ),
    transforms={
        "attn_qkv.weight": _TRANSPOSE,
        "attn_output.weight": _TRANSPOSE,
        "ffn_up.weight": _TRANSPOSE,
        "ffn_down.weight": _TRANSPOSE,
    },
)

ARCHITECTURES: dict[str, Architecture] = {
    arch.gguf_name: arch for arch in (LLAMA, QWEN2, QWEN3, PHI3, GEMMA2, GPT2)
}


def architecture_for(header: GGUFHeader) -> Architecture:
    """The table for this file's `general.architecture`; `GGUFError` when there is none."""
    name = header.architecture
    if not name:
        raise GGUFError(header.path, "no general.architecture in the metadata")
    if name not in ARCHITECTURES:
        raise GGUFError(
            header.path,
            f"architecture {name!r} cannot be imported yet (supported: "
            f"{', '.join(sorted(ARCHITECTURES))})",
        )
    return ARCHITECTURES[name]
