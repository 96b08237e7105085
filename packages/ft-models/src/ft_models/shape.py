"""The shape of a transformer: what the catalog, the memory estimator and the loaders share.

Read from a Hugging Face `config.json` (any of the architectures ft supports) or written by hand
in the catalog. Parameter counts are computed, not stored, so the catalog cannot drift from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

# config.json `model_type` -> the family name ft uses.
FAMILIES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "phi": "phi",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "gpt2": "gpt2",
    "gptj": "gptj",
    "bert": "bert",
    "roberta": "bert",
    "distilbert": "bert",
}
# Families whose MLP has three matrices (gate, up, down) rather than two.
GATED_MLP = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3"}


@attrs.frozen
class ModelShape:
    """The sizes that decide a model's parameters and memory."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read a transformers `config.json` (as a dict). Raises ValueError naming what is
        missing or unsupported."""
        model_type = str(config.get("model_type", ""))
        if config.get("text_config") and model_type not in FAMILIES:
            config = {
                **config["text_config"],
                "model_type": config["text_config"].get("model_type", model_type),
            }
            model_type = str(config.get("model_type", ""))
        family = FAMILIES.get(model_type)
        if family is None:
            raise ValueError(
                f"unsupported model_type {model_type!r}; ft supports {', '.join(sorted(set(FAMILIES)))}"
            )

        def get(*names: str, default: Any = None) -> Any:
            for name in names:
                if config.get(name) is not None:
                    return config[name]
            if default is not None:
                return default
            raise ValueError(f"config.json has none of {', '.join(names)}")

        hidden = int(get("hidden_size", "n_embd", "d_model"))
        heads = int(get("num_attention_heads", "n_head"))
        return cls(
            family=family,
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            num_layers=int(get("num_hidden_layers", "n_layer")),
            intermediate_size=int(get("intermediate_size", "n_inner", default=4 * hidden)),
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads", default=heads)),
            head_dim=int(get("head_dim", default=hidden // heads)),
            tie_word_embeddings=bool(
                config.get("tie_word_embeddings", family in ("gpt2", "gptj", "bert"))
            ),
            max_position_embeddings=int(
                get("max_position_embeddings", "n_positions", "n_ctx", default=2048)
            ),
        )

    @property
    def attention_parameters(self) -> int:
        """Weights of one attention block (q, k, v, o projections; biases ignored)."""
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        return self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size

    @property
    def mlp_parameters(self) -> int:
        """Weights of one MLP block."""
        matrices = 3 if self.family in GATED_MLP else 2
        return matrices * self.hidden_size * self.intermediate_size

    def parameter_count(self) -> int:
        """Approximate parameter count (embeddings, blocks, norms, head; biases ignored)."""
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        norms = (2 * self.num_layers + 1) * self.hidden_size
        return (
            embeddings
            + head
            + norms
            + self.num_layers * (self.attention_parameters + self.mlp_parameters)
        )

    def linear_layer_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one block, by the usual HF module name: what LoRA
        targets and what the estimator sizes adapters from."""
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        shapes = {
            "q_proj": (self.hidden_size, q_out),
            "k_proj": (self.hidden_size, kv_out),
            "v_proj": (self.hidden_size, kv_out),
            "o_proj": (q_out, self.hidden_size),
            "up_proj": (self.hidden_size, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }
        if self.family in GATED_MLP:
            shapes["gate_proj"] = (self.hidden_size, self.intermediate_size)
        return shapes
