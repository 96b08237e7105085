"""The fused LoRA forward (ft_train_torch.fused) computes what peft's own does."""

from __future__ import annotations

import copy

import peft
import torch

from ft_train_torch.fused import fuse_lora


def _models(dropout: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 6))
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], lora_dropout=dropout)
    plain = peft.get_peft_model(copy.deepcopy(base), config)
    for name, parameter in plain.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter count
            torch.nn.init.normal_(parameter)
    fused = copy.deepcopy(plain)
    return base, plain, fused


def _run(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    y = model(x)
    y.pow(2).sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_fused_lora_gives_peft_s_outputs_and_gradients() -> None:
    base, plain, fused = _models()
    assert fuse_lora(fused) == 2
    x = torch.randn(3, 5, 16)
    want, want_grads = _run(plain, x)
    got, got_grads = _run(fused, x)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
    # Still peft's layers: the adapter saves the same tensors, and switching it off is the base.
    assert isinstance(fused.base_model.model[0], peft.tuners.lora.layer.Linear)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    with fused.disable_adapter(), torch.no_grad():
        assert torch.equal(fused(x), base(x))


def test_fused_lora_under_bf16_autocast_stays_as_close_to_fp32() -> None:
    _, plain, fused = _models()
    fuse_lora(fused)
    x = torch.randn(3, 5, 16)
    reference = plain(x).detach()
    for model in (plain, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x).float()
        assert ((y - reference).norm() / reference.norm()).item() < 0.01


def test_dropout_keeps_peft_s_forward() -> None:
    _, plain, fused = _models(dropout=0.5)
    fuse_lora(fused)
    x = torch.randn(3, 5, 16)
    outputs = []
    for model in (plain, fused):
        torch.manual_seed(1)  # the same dropout masks: the same forward, peft's
        outputs.append(model(x).detach())
    torch.testing.assert_close(outputs[1], outputs[0])


def test_a_frozen_base_stored_in_bf16_trains_exactly_as_autocast_casting_it() -> None:
    import transformers

    from ft_train_torch.fused import frozen_linears_to

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    cast_each_step = peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)
    for name, parameter in cast_each_step.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    stored = copy.deepcopy(cast_each_step)
    fuse_lora(cast_each_step)
    fuse_lora(stored)
    # q/v's base layers and k/o/gate/up/down: 7 per layer; the tied output layer stays float32.
    assert frozen_linears_to(stored, torch.bfloat16) == 14
    layer = stored.base_model.model.model.layers[0]
    assert layer.self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert layer.mlp.down_proj.weight.dtype == torch.bfloat16
    assert stored.base_model.model.lm_head.weight.dtype == torch.float32
    assert layer.input_layernorm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in stored.parameters() if p.requires_grad)

    ids = torch.randint(0, 64, (2, 10))
    results = []
    for model in (cast_each_step, stored):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)  # bit-identical, not merely close
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.equal(a, b)
