"""Tiny LoRA adapters for the tiny models: every B matrix is non-zero, so merging matters."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

AdapterFactory = Callable[..., Path]


def build_adapter(base: Path, folder: Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA adapter on every linear layer of `base`, with random A and B (seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    is_gpt2 = model.config.model_type == "gpt2"
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules="all-linear",
        lora_dropout=0.0,
        fan_in_fan_out=is_gpt2,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_qwen3(llama: Path, folder: Path) -> Path:
    """A tiny random Qwen3 (not among ft-testing's tiny models) sized like them, with a head
    width of 16 rather than Qwen3's default 128, and the tiny Llama's tokenizer."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = json.loads((llama / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    keys += ("num_attention_heads", "num_key_value_heads", "max_position_embeddings")
    keys += ("bos_token_id", "eos_token_id", "pad_token_id")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        Qwen3Config(**{k: config[k] for k in keys}, head_dim=16)
    )
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(llama / name, folder / name)
    return folder


_SHARED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)

VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    # Llama 3's rope scaling over a short original context, so every branch of the factors
    # (kept, scaled by `factor`, smoothed in between) is hit by the 8 rotary frequencies.
    "llama-rope3": (
        "LlamaConfig",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 10000.0,
            }
        },
    ),
    "qwen2-yarn": (
        "Qwen2Config",
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 128,
                "rope_theta": 10000.0,
            }
        },
    ),
    "phi3-longrope": (
        "Phi3Config",
        {
            "original_max_position_embeddings": 128,
            "rope_scaling": {
                "rope_type": "longrope",
                "long_factor": [1.0, 1.1, 1.3, 1.8, 2.6, 3.9, 5.2, 6.0],
                "short_factor": [1.0, 1.0, 1.02, 1.05, 1.1, 1.2, 1.3, 1.4],
                "original_max_position_embeddings": 128,
            },
        },
    ),
    # Rows of whole 256-value super-blocks, so the K-quants are used (not their fallbacks).
    "llama-wide": (
        "LlamaConfig",
        {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4},
    ),
    "gemma2": (
        "Gemma2Config",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 24,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    "gemma3": (
        "Gemma3TextConfig",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 24,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
}
"""Tiny models ft-testing does not build (or did not when these tests were written): name ->
(transformers config class, settings over the tiny Llama's)."""


def build_variant(llama: Path, folder: Path, name: str) -> Path:
    """The tiny `name` model of `VARIANTS`, sized like the tiny Llama, with its tokenizer."""
    import shutil

    import torch
    import transformers

    config_class, overrides = VARIANTS[name]
    config = json.loads((llama / "config.json").read_text())
    settings = {k: config[k] for k in _SHARED_KEYS} | overrides
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        getattr(transformers, config_class)(**settings)
    )
    model.save_pretrained(folder, safe_serialization=True)
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(llama / file, folder / file)
    return folder


@pytest.fixture(scope="session")
def tiny_model(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: Callable[[str], Path]
) -> Callable[[str], Path]:
    """`tiny_model(arch) -> Path`: ft-testing's tiny models, a tiny Qwen3, and `VARIANTS`."""
    from ft_testing import ARCHITECTURES

    built: dict[str, Path] = {}

    def factory(arch: str) -> Path:
        if arch in ARCHITECTURES and arch not in ("qwen3",):
            return tiny_model_factory(arch)
        if arch not in built:
            folder = tmp_path_factory.mktemp(arch)
            llama = tiny_model_factory("llama")
            built[arch] = (
                build_qwen3(llama, folder)
                if arch == "qwen3"
                else build_variant(llama, folder, arch)
            )
        return built[arch]

    return factory


@pytest.fixture(scope="session")
def tiny_adapter(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]
) -> AdapterFactory:
    """`tiny_adapter(arch, seed=0) -> Path`: a PEFT LoRA adapter for the tiny `arch` model."""
    root = tmp_path_factory.mktemp("adapters")
    built: dict[tuple[str, int], Path] = {}

    def factory(arch: str, seed: int = 0) -> Path:
        if (arch, seed) not in built:
            built[arch, seed] = build_adapter(tiny_model(arch), root / f"{arch}-{seed}", seed)
        return built[arch, seed]

    return factory
