"""Adapters trained with MLX load in peft on torch (same logits) and in mlx-lm's layout."""

from __future__ import annotations

import json
from functools import partial

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from ft_testing import training
from ft_train_mlx import MLXTrainer, load_adapted, peft_to_mlx_lm

train = partial(training.train, MLXTrainer)

# float32 on both sides; the tiny model's logits are below 2, and torch and MLX differ by
# under 1e-6 on the base model (docs/architectures.md); the adapters add about as much.
TOLERANCE = 1e-5  # measured: 2.1e-7 (LoRA), 3.7e-7 (DoRA)
IDS = [[1, 17, 42, 99, 311, 7, 250, 3, 64, 128, 500, 2]]


def _torch_peft_logits(model_path, adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    peft_model.eval()
    with torch.no_grad():
        return peft_model(torch.tensor(IDS)).logits.numpy()


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("lora", {"method__target_modules": "all-linear", "method__rslora": True}),
        ("dora", {"method__target_modules": ["q_proj", "v_proj", "down_proj"]}),
    ],
)
def test_peft_loads_the_mlx_adapter_with_the_same_logits(
    make_job, tiny_llama, method, extra
) -> None:
    # a high rate, so that lora_B is far from its zero start and a transpose mix-up would show
    job = make_job(
        validation=False,
        method__name=method,
        training__max_steps=3,
        training__learning_rate=5e-2,
        **extra,
    )
    _, result = train(job)
    adapter = result.adapter_path
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert (a.shape, b.shape) == ((4, 64), (64, 4))
    assert np.abs(b).max() > 1e-2
    if method == "dora":
        assert tensors[
            "base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector"
        ].shape == (64,)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["use_dora"]) == ("LORA", 4, method == "dora")

    mlx_model, _ = load_adapted(tiny_llama, adapter)
    mlx_logits = np.array(mlx_model(mx.array(IDS)))
    torch_logits = _torch_peft_logits(tiny_llama, adapter)
    difference = np.abs(mlx_logits - torch_logits).max()
    print(f"{method}: largest |MLX - peft| logit difference {difference:.2e}")
    assert difference < TOLERANCE, difference
    # and the adapter changed the model: the base alone is far from it
    base_model, _ = load_adapted(tiny_llama, adapter)
    for module in base_model.modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.zeros_like(module.lora_b)
    assert np.abs(np.array(base_model(mx.array(IDS))) - mlx_logits).max() > 100 * TOLERANCE


def test_mlx_lm_layout(make_job, tiny_llama, tmp_path) -> None:
    from mlx_lm.tuner.utils import load_adapters

    from ft_models.load import load_mlx

    job = make_job(validation=False, training__max_steps=2, training__learning_rate=5e-2)
    _, result = train(job)
    out = peft_to_mlx_lm(result.adapter_path, tmp_path / "mlx-adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config == {
        "fine_tune_type": "lora",
        "num_layers": 2,
        "lora_parameters": {
            "rank": 4,
            "scale": 2.0,
            "dropout": 0.0,
            "keys": ["self_attn.q_proj", "self_attn.v_proj"],
        },
    }
    assert sorted(mx.load(str(out / "adapters.safetensors")))[:2] == [
        "model.layers.0.self_attn.q_proj.lora_a",
        "model.layers.0.self_attn.q_proj.lora_b",
    ]
    model, _ = load_mlx(tiny_llama, dtype="float32")
    load_adapters(model, str(out))
    model.eval()
    ours, _ = load_adapted(tiny_llama, result.adapter_path)
    np.testing.assert_array_equal(np.array(model(mx.array(IDS))), np.array(ours(mx.array(IDS))))


def test_qlora_trains_over_a_quantized_base(make_job, tiny_llama) -> None:
    import mlx.nn as nn

    job = make_job(
        validation=False, method__name="qlora", method__quant_bits=4, training__max_steps=2
    )
    events, result = train(job)
    assert result.reason == "max_steps"
    steps = [e for e in events if e["type"] == "step"]
    assert all(np.isfinite(e["loss"]) for e in steps)
    model, _ = load_adapted(tiny_llama, result.adapter_path)
    quantized = [m for m in model.modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(quantized) == 2 * 7  # every linear layer of both blocks; lm_head stays float
    extra = json.loads((result.adapter_path / "ft_adapter.json").read_text())
    assert extra == {"backend": "mlx", "method": "qlora", "quant_bits": 4}
