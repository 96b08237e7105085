"""Tiny LoRA adapters for the tiny models: every B matrix is non-zero, so merging matters."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_adapter(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: Callable[[str], Path]
) -> AdapterFactory:
    """`tiny_adapter(arch, seed=0) -> Path`: a PEFT LoRA adapter for the tiny `arch` model."""
    root = tmp_path_factory.mktemp("adapters")
    built: dict[tuple[str, int], Path] = {}

    def factory(arch: str, seed: int = 0) -> Path:
        if (arch, seed) not in built:
            built[arch, seed] = build_adapter(
                tiny_model_factory(arch), root / f"{arch}-{seed}", seed
            )
        return built[arch, seed]

    return factory
