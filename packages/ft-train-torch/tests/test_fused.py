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
