"""--format mlx-adapter takes DoRA adapters too: mlx-lm's DoRALinear computes what peft's DoRA
does (ft_models.adapters), and the export's own check reloads it with mlx-lm against the merge."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ft_export import ExportError, ExportOptions, ExportSource, get_exporter, no_progress


def dora_adapter(base: Path, folder: Path, **extra: object) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,  # A and B random: B A is not zero, so the magnitude matters
        use_dora=True,
        **extra,  # type: ignore[arg-type]
    )
    get_peft_model(model, config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_dora_adapter_exports_in_mlx_lm_layout(
    tiny_model_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_model_factory("llama")
    source = ExportSource(base, (dora_adapter(base, tmp_path / "dora"),), name="tiny-dora")
    result = get_exporter("mlx-adapter").export(
        source, tmp_path / "out", ExportOptions(), no_progress
    )
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "dora"
    assert config["lora_parameters"] == {
        "rank": 4,
        "scale": 2.0,
        "dropout": 0.0,
        "keys": ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"],
    }
    check = result.verification
    assert check is not None and check.passed, check.summary()


def test_per_module_ranks_are_refused_with_what_to_do(
    tiny_model_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_model_factory("llama")
    adapter = dora_adapter(base, tmp_path / "dora", rank_pattern={"v_proj": 2})
    with pytest.raises(ExportError, match=r"one rank and scale for every layer: export --format"):
        get_exporter("mlx-adapter").export(
            ExportSource(base, (adapter,)), tmp_path / "out", ExportOptions(), no_progress
        )
    assert not (tmp_path / "out").exists()
