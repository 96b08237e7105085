"""Packed rows keep attention inside each example: a packed batch has the loss of the same
examples padded one per row (fp32, to 1e-5 relative), at a memory cost linear in the row's
length."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_train_torch.attention import Segments, packed_attention, register
from ft_train_torch.packing import (
    OutputAtTargets,
    causal_lm_loss,
    model_inputs,
    padded_count,
    selected_lm_loss,
    shifted_targets,
    trained_positions,
    trained_tokens,
)


def _forward(model, batch) -> tuple[torch.Tensor, float, int]:
    inputs = model_inputs(batch, torch.device("cpu"))
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


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma", "phi3"])
def test_packed_loss_equals_padded_loss(arch, tiny_model_factory, prepared_alpaca) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_factory(arch), dtype=torch.float32, attn_implementation=register()
    ).eval()
    with PreparedDataset(prepared_alpaca(arch)[0]) as dataset:
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
    packed_logits, packed_sum, packed_count = _forward(model, packed)
    padded_logits, padded_sum, padded_count = _forward(model, padded)
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


def test_layout_and_targets() -> None:
    segments = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    layout = Segments.of(segments)
    # Examples by length: the 6-token row, then the 3 and 2 token ones (2 >= 0.8 * 3 is false).
    assert [tuple(b.shape) for b in layout.buckets] == [(1, 6), (1, 3), (1, 2)]
    assert layout.buckets[1].tolist() == [[2, 3, 4]]
    assert layout.buckets[2].tolist() == [[0, 1]]
    # Row-major flat positions -> their place in the bucket outputs; padding -> the zero row.
    assert layout.order.tolist() == [9, 10, 6, 7, 8, 11, 0, 1, 2, 3, 4, 5]
    # A short example in a longer bucket repeats its last position (never seen causally).
    assert Segments.of(np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0]])).buckets[0].tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 8],
    ]
    batch = {"labels": np.array([[-100, 5, 6, 7, 8, -100]]), "segment_ids": segments[:1]}
    # Position 1 -> 2 crosses into example 2: 6 is a trained label, but not a target there.
    assert shifted_targets(batch).tolist() == [[5, -100, 7, 8, -100]]


def _reference(q, k, v, segments, *, window=None, softcap=None):
    """Attention of each example alone, computed the long way (float64 scores)."""
    out = torch.zeros(q.shape[0], q.shape[2], q.shape[1], v.shape[-1], dtype=q.dtype)
    groups = q.shape[1] // k.shape[1]
    for row in range(segments.shape[0]):
        for segment in set(segments[row].tolist()) - {0}:
            at = torch.as_tensor(np.flatnonzero(segments[row] == segment))
            qs, ks, vs = q[row][:, at], k[row][:, at], v[row][:, at]
            ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
            scores = qs @ ks.transpose(-1, -2) / q.shape[-1] ** 0.5
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            i = torch.arange(len(at))
            allowed = i[None, :] <= i[:, None]
            if window is not None:
                allowed &= i[:, None] - i[None, :] < window
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[row, at] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (3, None), (None, 30.0), (4, 50.0)])
def test_packed_attention_is_each_example_alone(window, softcap) -> None:
    """Grouped-query attention over examples of mixed lengths, sliding windows shorter than an
    example, and Gemma 2's soft-capped scores: every real position gets what its example
    alone gives, and padding gets zeros."""
    torch.manual_seed(0)
    segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 0], [1] * 9 + [2, 2, 2]])
    q = torch.randn(2, 4, 12, 8, dtype=torch.float64)
    k, v = (
        torch.randn(2, 2, 12, 8, dtype=torch.float64),
        torch.randn(2, 2, 12, 8, dtype=torch.float64),
    )
    module = torch.nn.Module().eval()
    out, _ = packed_attention(
        module,
        q,
        k,
        v,
        None,
        segments=Segments.of(segments),
        sliding_window=window,
        softcap=softcap,
    )
    expected = _reference(q, k, v, segments, window=window, softcap=softcap)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert float(out[0, 11].abs().max()) == 0.0


@pytest.mark.parametrize("float32", [True, False], ids=["float32-attention", "bf16-attention"])
def test_under_bf16_autocast_on_a_cpu_attention_may_run_in_float32(monkeypatch, float32) -> None:
    """Under bf16 autocast on a CPU without AMX, attention leaves autocast and runs in float32
    (faster there, and exact to float32); forced either way, the output stays each example's
    own attention, to float32's or bf16's rounding, with the gradients flowing back."""
    from ft_train_torch import attention

    monkeypatch.setattr(attention, "FLOAT32_ON_CPU", float32)
    torch.manual_seed(0)
    segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 0], [1] * 9 + [2, 2, 2]])
    q = torch.randn(2, 4, 12, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 12, 8, requires_grad=True) for _ in range(2))
    module = torch.nn.Module().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention._float32_here(q.device) is float32
        out, _ = packed_attention(module, q, k, v, None, segments=Segments.of(segments))
    expected = _reference(q.double(), k.double(), v.double(), segments).float()
    assert out.dtype == (torch.float32 if float32 else torch.bfloat16)
    tolerance = 1e-5 if float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)
    assert float(out[0, 11].abs().max()) == 0.0
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in (q, k, v))
    # Without autocast, or in fp16 autocast, nothing changes.
    assert not attention._float32_here(q.device)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not attention._float32_here(q.device)
    if not float32:
        return
    monkeypatch.setattr(attention, "FLOAT32_ON_CPU", None)
    monkeypatch.setattr(attention, "_has_amx", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not attention._float32_here(q.device)  # with AMX, bf16 attention stays


def test_mixed_sliding_and_full_layers_pack(tiny_model_factory, prepared_alpaca) -> None:
    """A model whose layers mix sliding-window and full attention (Qwen2 with layer_types, as
    Qwen2.5 and Gemma 2/3 have) packs: each layer applies its own window inside each example."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config.from_pretrained(tiny_model_factory("qwen2"))
    config.use_sliding_window, config.sliding_window = True, 8
    config.layer_types = ["sliding_attention", "full_attention"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=register()).eval()
    # A config of its own: from_config sets the attention implementation on the config.
    reference = AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation="eager"
    ).eval()
    reference.load_state_dict(model.state_dict())
    with PreparedDataset(prepared_alpaca("qwen2")[0]) as dataset:
        packed = Batches(
            dataset, batch_size=1, max_seq_length=256, mode="pack", shuffle=False
        ).batch(0)
    segments = packed["segment_ids"][0]
    assert segments.max() >= 3 and np.bincount(segments)[1:].min() > 8  # longer than the window
    with torch.no_grad():
        logits = model(**model_inputs(packed, torch.device("cpu"))).logits[0]
        for segment in range(1, int(segments.max()) + 1):
            at = np.flatnonzero(segments == segment)
            alone = reference(input_ids=torch.as_tensor(packed["input_ids"][:, at])).logits[0]
            torch.testing.assert_close(logits[at], alone, rtol=1e-4, atol=1e-4)


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for the backward pass of `batch`'s forward (the activations)."""
    sizes: list[int] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(**model_inputs(batch, torch.device("cpu"))).logits.sum()
    return sum(sizes)


def test_memory_grows_linearly_with_the_row_length(tiny_model_factory) -> None:
    """Rows of 64-token examples: doubling the row's length doubles what the forward pass keeps
    (a row-sized mask would quadruple its share); the same rows with a dense block mask, the
    way packing worked before, grow faster."""
    from transformers import AutoModelForCausalLM

    path = tiny_model_factory("llama")
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=register())
    model.requires_grad_(True)

    def batch(length: int) -> dict[str, np.ndarray]:
        segments = (np.arange(length) // 64 + 1)[None]
        ids = np.random.default_rng(0).integers(0, 500, (1, length))
        return {
            "input_ids": ids,
            "labels": ids,
            "segment_ids": segments,
            "position_ids": (np.arange(length) % 64)[None],
            "attention_mask": np.ones((1, length), dtype=np.int64),
        }

    short, long = _saved_bytes(model, batch(1024)), _saved_bytes(model, batch(4096))
    assert 3.9 < long / short < 4.1  # 4x the tokens, 4x the memory
    dense = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    dense.requires_grad_(True)

    def dense_bytes(length: int) -> int:
        b = batch(length)
        segments = torch.as_tensor(b["segment_ids"])
        i = torch.arange(length)
        mask = (segments[:, :, None] == segments[:, None, :]) & (i[None, :] <= i[:, None])
        sizes: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: sizes.append(t.numel() * t.element_size()) or t, lambda t: t
        ):
            dense(
                input_ids=torch.as_tensor(b["input_ids"]),
                position_ids=torch.as_tensor(b["position_ids"]),
                attention_mask=mask[:, None],
            ).logits.sum()
        return sum(sizes)

    assert dense_bytes(4096) / dense_bytes(1024) > 6  # the L x L mask term takes over


@pytest.mark.parametrize("chunked", [False, True], ids=["selected", "chunked"])
@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_logits_at_targets_only_give_the_same_loss_and_gradients(
    arch, chunked, tiny_model_factory, prepared_alpaca, monkeypatch
) -> None:
    """Computing the output layer at the trained positions only (the training loss' shortcut)
    gives the loss and the gradients of the full logits, for a packed batch; Gemma's tied and
    scaled output included. Chunked (16 targets a chunk here, so several chunks and a padded
    last one), the logits are recomputed in the backward pass and the numbers stay the same."""
    import ft_train_torch.packing as packing

    monkeypatch.setattr(packing, "LOSS_CHUNK", 16)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_factory(arch), dtype=torch.float32, attn_implementation=register()
    )
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with PreparedDataset(prepared_alpaca(arch)[0]) as dataset:
        batch = Batches(dataset, batch_size=2, max_seq_length=384, mode="pack").batch(0)
    inputs = model_inputs(batch, torch.device("cpu"))
    positions = trained_positions(batch)
    assert 0 < positions.sum() == trained_tokens(batch) < positions.size  # prompts are skipped

    def run(select: bool) -> tuple[float, dict[str, torch.Tensor], tuple[int, ...]]:
        model.zero_grad(set_to_none=True)
        if select:
            output = OutputAtTargets(base, chunked=chunked)
            with output.at(positions, torch.device("cpu")):
                logits = model(**inputs).logits
            loss = output.chunked_loss(batch) if chunked else selected_lm_loss(logits, batch)
            output.remove()
        else:
            logits = model(**inputs).logits
            loss = causal_lm_loss(logits, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return float(loss), grads, tuple(logits.shape)

    full_loss, full_grads, full_shape = run(select=False)
    loss, grads, shape = run(select=True)
    # Rows rounded up to one of four sizes an octave (padding repeats the last position);
    # chunked, the model's own logits are one row, the loss has its own.
    rows = 1 if chunked else padded_count(trained_tokens(batch))
    assert shape == (rows, full_shape[-1])
    assert trained_tokens(batch) > 2 * 16  # several chunks
    assert loss == pytest.approx(full_loss, rel=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)
    # Outside `at`, the model gives every position's logits again.
    with torch.no_grad():
        assert model(**inputs).logits.shape == full_shape


def test_chunked_loss_keeps_one_chunk_of_logits_for_the_backward_pass(
    tiny_model_factory, prepared_alpaca, monkeypatch
) -> None:
    """What the backward pass keeps of the logits: every target's row when they are computed
    at once, one chunk's at a time (recomputed) when chunked."""
    from transformers import AutoModelForCausalLM

    import ft_train_torch.packing as packing

    monkeypatch.setattr(packing, "LOSS_CHUNK", 16)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_factory("llama"), dtype=torch.float32, attn_implementation=register()
    )
    vocab = base.config.vocab_size
    with PreparedDataset(prepared_alpaca("llama")[0]) as dataset:
        batch = Batches(dataset, batch_size=2, max_seq_length=384, mode="pack").batch(0)
    inputs = model_inputs(batch, torch.device("cpu"))
    targets = trained_tokens(batch)

    def largest_vocab_rows_saved(chunked: bool) -> int:
        rows: list[int] = []

        weights = {w.data_ptr() for w in base.parameters()}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            is_weight = tensor.data_ptr() in weights  # (a view of) the output layer's weight
            if tensor.dim() == 2 and tensor.shape[-1] == vocab and not is_weight:
                rows.append(tensor.shape[0])
            return tensor

        output = OutputAtTargets(base, chunked=chunked)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with output.at(trained_positions(batch), torch.device("cpu")):
                logits = base(**inputs).logits
            loss = output.chunked_loss(batch) if chunked else selected_lm_loss(logits, batch)
        output.remove()
        loss.backward()
        return max(rows, default=0)

    assert largest_vocab_rows_saved(chunked=False) >= targets > 16
    assert largest_vocab_rows_saved(chunked=True) <= 16
