"""Run by test_distributed.py under `torchrun --nproc-per-node 1` on a CUDA machine: FSDP2 over
NCCL on one GPU (a world of one; the machines lent to this project have one GPU each).

LoRA on a tiny Llama, sharded with `distributed.shard`, trains 3 steps in bf16 autocast next to
an unsharded copy; the gathered weights and optimizer state (`full_weights`, `full_optimizer_state`) must equal the
copy's, and putting that state back (`load_optimizer_state`) into a fresh sharded model must
make the next step agree too. Prints `OK` on success."""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from ft_train_torch import distributed


def build(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    base = LlamaForCausalLM(config).to(device)
    return get_peft_model(
        base,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def main() -> int:
    cuda = torch.cuda.is_available()  # without CUDA (to check the script itself): gloo on the CPU
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    plain = build(device)
    sharded = distributed.shard(copy.deepcopy(plain), device)
    assert distributed.is_fsdp(sharded)
    make = lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)  # noqa: E731
    opt_plain, opt_sharded = make(plain), make(sharded)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 128, (2, 16), generator=generator).to(device) for _ in range(4)]
    for ids in batches[:3]:
        a, b = step(plain, opt_plain, ids), step(sharded, opt_sharded, ids)
        assert abs(a - b) < 1e-3, (a, b)

    weights = distributed.full_weights(sharded, trainable_only=True)
    expected = {n: p.detach().cpu() for n, p in plain.named_parameters() if p.requires_grad}
    assert weights.keys() == expected.keys(), sorted(set(weights) ^ set(expected))
    assert all(t.device.type == "cpu" for t in weights.values())
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-5)
    saved = distributed.full_optimizer_state(sharded, opt_sharded)
    reference = opt_plain.state_dict()
    assert saved["state"].keys() == reference["state"].keys()
    for index, entries in reference["state"].items():
        for key, value in entries.items():
            torch.testing.assert_close(
                saved["state"][index][key].cpu(), value.cpu(), rtol=0, atol=1e-5
            )

    # Resume: a fresh sharded model with the gathered weights loaded before sharding, and the
    # optimizer state put back into its shards, takes the same 4th step as the copy.
    fresh = build(device)
    with torch.no_grad():
        named = dict(fresh.named_parameters())
        for name, tensor in weights.items():
            named[name].copy_(tensor)
    fresh = distributed.shard(fresh, device)
    opt_fresh = make(fresh)
    distributed.load_optimizer_state(fresh, opt_fresh, saved)
    a, b = step(plain, opt_plain, batches[3]), step(fresh, opt_fresh, batches[3])
    assert abs(a - b) < 1e-3, (a, b)
    after = distributed.full_weights(fresh, trainable_only=True)
    for name, param in plain.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(after[name], param.detach().cpu(), rtol=0, atol=1e-5)
    dist.destroy_process_group()
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
