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


@pytest.fixture(scope="session")
def tiny_model(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: Callable[[str], Path]
) -> Callable[[str], Path]:
    """`tiny_model(arch) -> Path`: ft-testing's tiny models, and a tiny Qwen3."""
    qwen3: list[Path] = []

    def factory(arch: str) -> Path:
        if arch != "qwen3":
            return tiny_model_factory(arch)
        if not qwen3:
            qwen3.append(build_qwen3(tiny_model_factory("llama"), tmp_path_factory.mktemp("qwen3")))
        return qwen3[0]

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
