"""ft's static decode loop (`ft_models.generation.static_decode`): for every architecture it
takes, the logits equal transformers' own forward pass to rounding, step after step and across
the cache's growth; the architectures it does not take fall back to transformers and say why;
joining the projections costs no memory; and the CPU's decode dtype is measured, not assumed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import transformers

from ft_models.generation import torch_backend
from ft_models.generation.static_decode import StaticDecoder, unsupported_reason
from ft_models.generation.torch_backend import TorchLM

SMALL = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
)  # fmt: skip


def _model(kind: str, **extra: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(kind, **{**SMALL, **extra})
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _reference(model: Any, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy()


TAKEN = {
    "llama": {},
    "llama-rope3": {
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    },
    "qwen2": {},  # biases on q, k and v
    "qwen3": {"head_dim": 16},  # per-head q/k norms
    "mistral": {"sliding_window": None},
}  # fmt: skip


@pytest.mark.parametrize("name", list(TAKEN))
def test_logits_equal_transformers_step_by_step(name: str) -> None:
    model = _model(name.split("-")[0], **TAKEN[name])
    assert unsupported_reason(model) is None
    decoder = StaticDecoder(model)
    rng = np.random.default_rng(1)
    ids = [int(i) for i in rng.integers(0, 128, 250)]
    got = decoder.start(ids)
    np.testing.assert_allclose(got, _reference(model, ids), atol=2e-5, rtol=1e-5)
    # Past 256 positions the cache (and the rotary tables) double: nothing is lost.
    for _ in range(12):
        ids.append(int(got.argmax()))
        got = decoder.step(ids[-1])
        np.testing.assert_allclose(got, _reference(model, ids), atol=2e-5, rtol=1e-5)
    assert decoder.keys[0].shape[2] == 512
    more = [5, 6, 7]  # a next turn, fed after what the cache holds
    np.testing.assert_allclose(decoder.extend(more), _reference(model, ids + more), atol=2e-5)


def test_joined_projections_share_the_layers_memory() -> None:
    model = _model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    count = sum(p.numel() for p in model.parameters())
    decoder = StaticDecoder(model)
    attention = model.model.layers[0].self_attn
    qkv = decoder.layers[0].qkv[0]
    start, end = qkv.data_ptr(), qkv.data_ptr() + qkv.numel() * qkv.element_size()
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert start <= projection.weight.data_ptr() < end  # a view, not a copy
    assert sum(p.numel() for p in model.parameters()) == count
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]), name
    # A change made through a layer (merging an adapter does this) is the loop's too.
    with torch.no_grad():
        attention.v_proj.weight.add_(0.5)
    ids = [3, 1, 4, 1, 5]
    np.testing.assert_allclose(decoder.start(ids), _reference(model, ids), atol=2e-5)


@pytest.mark.parametrize(
    ("kind", "extra", "why"),
    [
        ("gemma", {"head_dim": 16}, "model_type 'gemma'"),
        ("phi3", {"pad_token_id": 0}, "model_type 'phi3'"),
        ("mistral", {"sliding_window": 64}, "sliding window"),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1},
         "sliding-window layers"),
        ("llama", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0,
                                       "factor": 2.0}}, "changes with the sequence length"),
    ],
)  # fmt: skip
def test_other_models_fall_back_to_transformers_and_say_why(kind, extra, why) -> None:
    model = _model(kind, **extra)
    assert why in (unsupported_reason(model) or "")
    lm = TorchLM(model)
    ids = [3, 1, 4, 1, 5]
    np.testing.assert_allclose(lm.start(ids), _reference(model, ids), atol=2e-5)
    assert lm.static() is None and why in (lm.static_reason or "")
    assert type(lm.batch()).__name__ == "TorchBatch"


def test_a_model_wrapped_by_peft_is_not_taken() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert "not plain Linear" in (unsupported_reason(model.base_model.model) or "")


def test_the_environment_turns_the_static_loop_off(monkeypatch) -> None:
    monkeypatch.setenv("FT_STATIC_DECODE", "0")
    lm = TorchLM(_model("llama"))
    lm.start([1, 2, 3])
    assert lm.static() is None and lm.static_reason == "FT_STATIC_DECODE=0"


def test_a_cpu_without_native_bf16_decodes_in_float32(monkeypatch) -> None:
    import ft_models.device

    torch_backend.cpu_decode_dtype.cache_clear()
    monkeypatch.setattr(ft_models.device, "cpu_has_fast_bf16", lambda: False)
    try:
        assert torch_backend.cpu_decode_dtype() == "float32"
        assert torch_backend.torch_generation_dtype("cpu") == "float32"
    finally:
        torch_backend.cpu_decode_dtype.cache_clear()


def test_a_cpu_with_native_bf16_measures_before_choosing(monkeypatch) -> None:
    import ft_models.device

    torch_backend.cpu_decode_dtype.cache_clear()
    monkeypatch.setattr(ft_models.device, "cpu_has_fast_bf16", lambda: True)
    calls: list[torch.dtype] = []
    real = torch.nn.functional.linear

    def counted(x: Any, weight: Any, *rest: Any) -> Any:
        calls.append(weight.dtype)
        return real(x, weight, *rest)

    monkeypatch.setattr(torch.nn.functional, "linear", counted)
    threads = torch.get_num_threads()
    try:
        assert torch_backend.cpu_decode_dtype() in ("float32", "bfloat16")
    finally:
        torch_backend.cpu_decode_dtype.cache_clear()
    assert set(calls) == {torch.float32, torch.bfloat16}  # both were timed
    assert torch.get_num_threads() == threads  # and the thread count put back
