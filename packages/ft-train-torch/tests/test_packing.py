"""Packed rows keep attention inside each example: a packed batch has the loss of the same
examples padded one per row (fp32, to 1e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_train_torch.packing import (
    OutputAtTargets,
    block_causal_mask,
    causal_lm_loss,
    model_inputs,
    selected_lm_loss,
    shifted_targets,
    trained_positions,
    trained_tokens,
)


def _forward(model, batch, attn: str) -> tuple[torch.Tensor, float, int]:
    inputs = model_inputs(batch, torch.device("cpu"), attn_implementation=attn)
    with torch.no_grad():
        logits = model(**inputs).logits
    return logits, float(causal_lm_loss(logits, batch)), trained_tokens(batch)


def _per_example(logits: torch.Tensor, segment_ids: np.ndarray) -> list[torch.Tensor]:
    """Each example's logits, in order (row by row, segment by segment)."""
    out = []
    for row in range(segment_ids.shape[0]):
        for segment in range(1, int(segment_ids[row].max()) + 1):
            out.append(logits[row, segment_ids[row] == segment])
    return out


@pytest.mark.parametrize(
    ("arch", "attn"),
    [
        ("llama", "sdpa"),
        ("llama", "eager"),
        ("qwen2", "sdpa"),
        ("mistral", "sdpa"),
        ("gemma", "sdpa"),
        ("phi3", "sdpa"),
    ],
)
def test_packed_loss_equals_padded_loss(arch, attn, tiny_model_factory, prepared) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_factory(arch), dtype=torch.float32, attn_implementation=attn
    ).eval()
    with PreparedDataset(prepared(arch)[0]) as dataset:
        packing = Batches(dataset, batch_size=2, max_seq_length=384, mode="pack", shuffle=False)
        packed = packing.batch(0)
        rows = packed["segment_ids"].max(axis=1)
        assert (
            packed["segment_ids"].shape == (2, 384) and rows.min() >= 3
        )  # several examples per row
        # The same examples, in the same order, one per row.
        members = np.concatenate(packing.rows(0)[:2])
        everything = Batches(
            dataset, batch_size=len(dataset), max_seq_length=384, mode="pad", shuffle=False
        ).batch(0)
        padded = {key: value[members] for key, value in everything.items()}
    packed_logits, packed_sum, packed_count = _forward(model, packed, attn)
    padded_logits, padded_sum, padded_count = _forward(model, padded, attn)
    assert packed_count == padded_count > 0
    assert packed_sum / packed_count == pytest.approx(padded_sum / padded_count, rel=1e-5)
    # Token by token too: every example's logits are those it gets alone.
    pairs = list(
        zip(
            _per_example(packed_logits, packed["segment_ids"]),
            _per_example(padded_logits, padded["segment_ids"]),
            strict=True,
        )
    )
    assert max(float((a - b).abs().max()) for a, b in pairs) < 1e-5
    # The check has teeth: the same packed rows with a plain padding mask attend across examples.
    with torch.no_grad():
        leaky = model(
            input_ids=torch.as_tensor(packed["input_ids"]),
            attention_mask=torch.as_tensor(packed["attention_mask"]),
        ).logits
    leaked = _per_example(leaky, packed["segment_ids"])
    assert max(float((a - b).abs().max()) for a, (_, b) in zip(leaked, pairs, strict=True)) > 1e-3


def test_mask_and_targets() -> None:
    segments = torch.tensor([[1, 1, 2, 2, 2, 0]])
    mask = block_causal_mask(segments, boolean=True, dtype=torch.float32)[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # padding sees itself only: no empty softmax row
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    additive = block_causal_mask(segments, boolean=False, dtype=torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected)
    window = block_causal_mask(
        torch.ones(1, 4, dtype=torch.long), boolean=True, dtype=torch.float32, sliding_window=2
    )[0, 0]
    assert window.sum(dim=1).tolist() == [1, 2, 2, 2]
    batch = {"labels": np.array([[-100, 5, 6, 7, 8, -100]]), "segment_ids": segments.numpy()}
    # Position 1 -> 2 crosses into example 2: 6 is a trained label, but not a target there.
    assert shifted_targets(batch).tolist() == [[5, -100, 7, 8, -100]]


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_logits_at_targets_only_give_the_same_loss_and_gradients(
    arch, tiny_model_factory, prepared
) -> None:
    """Computing the output layer at the trained positions only (the training loss' shortcut)
    gives the loss and the gradients of the full logits, for a packed batch; Gemma's tied and
    scaled output included."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory(arch), dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with PreparedDataset(prepared(arch)[0]) as dataset:
        batch = Batches(dataset, batch_size=2, max_seq_length=384, mode="pack").batch(0)
    inputs = model_inputs(batch, torch.device("cpu"))
    positions = trained_positions(batch)
    assert 0 < positions.sum() == trained_tokens(batch) < positions.size  # prompts are skipped

    def run(select: bool) -> tuple[float, dict[str, torch.Tensor], tuple[int, ...]]:
        model.zero_grad(set_to_none=True)
        if select:
            output = OutputAtTargets(base)
            with output.at(positions, torch.device("cpu")):
                logits = model(**inputs).logits
            output.remove()
            loss = selected_lm_loss(logits, batch)
        else:
            logits = model(**inputs).logits
            loss = causal_lm_loss(logits, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return float(loss), grads, tuple(logits.shape)

    full_loss, full_grads, full_shape = run(select=False)
    loss, grads, shape = run(select=True)
    assert shape == (trained_tokens(batch), full_shape[-1])
    assert loss == pytest.approx(full_loss, rel=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)
    # Outside `at`, the model gives every position's logits again.
    with torch.no_grad():
        assert model(**inputs).logits.shape == full_shape
