"""Attention over packed rows (ft_train_mlx.segments): each example attends to itself only, the
loss and gradients of a packed batch are those of its examples alone, and memory grows with the
row's length, not with its square."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from ft_train_mlx import packing
from ft_train_mlx.packing import model_inputs, summed_loss
from ft_train_mlx.segments import segment_layout, use_segmented_attention

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 512}


def _mlx_lm_model(kind: str, **overrides: Any) -> nn.Module:
    """A random float32 mlx-lm model built in code: `llama` (llama.py's ModelArgs) or another
    module's name, with `SMALL` sizes."""
    import importlib

    module = importlib.import_module(f"mlx_lm.models.{kind}")
    mx.random.seed(0)
    fields = {"model_type": kind, "rms_norm_eps": 1e-5, **SMALL, **overrides}
    model = module.Model(module.ModelArgs.from_dict(fields))
    mx.eval(model.parameters())
    return model


def _models(tiny_model_factory: Callable[[str], Any]) -> dict[str, Callable[[], nn.Module]]:
    from ft_models.load import load_mlx

    def tiny(arch: str) -> Callable[[], nn.Module]:
        return lambda: load_mlx(tiny_model_factory(arch), dtype="float32")[0]

    heads = {"num_attention_heads": 4, "num_key_value_heads": 4}
    return {
        "llama-gqa": tiny("llama"),  # 4 heads, 2 key/value heads
        "qwen2-gqa": tiny("qwen2"),  # biases on q, k, v
        "llama-mha": lambda: _mlx_lm_model("llama", **heads),
        # one sliding layer (window 5, shorter than most examples) and one full layer
        "llama-sliding": lambda: _mlx_lm_model(
            "llama", **heads, layer_types=["sliding_attention", "full_attention"], sliding_window=5
        ),
        "gemma3-sliding": lambda: _mlx_lm_model(
            "gemma3_text",
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=5,
            sliding_window_pattern=2,
        ),
        # builds its attention itself (soft-capping): the dense block mask, a row at a time
        "gemma2-dense": lambda: _mlx_lm_model(
            "gemma2", num_attention_heads=4, num_key_value_heads=2, head_dim=16
        ),
    }


def _batch(rows: list[list[np.ndarray]], width: int) -> dict[str, np.ndarray]:
    ids = np.zeros((len(rows), width), np.int64)
    segments = np.zeros((len(rows), width), np.int64)
    for r, parts in enumerate(rows):
        at = 0
        for k, part in enumerate(parts, 1):
            ids[r, at : at + len(part)] = part
            segments[r, at : at + len(part)] = k
            at += len(part)
    labels = np.where(segments > 0, ids, -100)
    return {"input_ids": ids, "labels": labels, "segment_ids": segments}


def _loss_and_grads(model: nn.Module, batch: dict[str, np.ndarray]) -> tuple[float, dict]:
    loss, grads = nn.value_and_grad(model, lambda *a: summed_loss(model, *a))(*model_inputs(batch))
    mx.eval(loss, grads)
    return float(loss.item()), {k: np.array(v) for k, v in tree_flatten(grads)}


@pytest.mark.parametrize(
    "name",
    ["llama-gqa", "qwen2-gqa", "llama-mha", "llama-sliding", "gemma3-sliding", "gemma2-dense"],
)
def test_packed_batch_gives_the_loss_and_gradients_of_its_examples(
    name, tiny_model_factory, monkeypatch
) -> None:
    model = _models(tiny_model_factory)[name]()
    segmented = name != "gemma2-dense"
    assert use_segmented_attention(model) is segmented
    if segmented:  # the dense mask is never built: attention runs per example

        def no_dense(*args: Any) -> mx.array:
            raise AssertionError("the dense mask was built")

        monkeypatch.setattr(packing, "block_causal_mask", no_dense)
    rng = np.random.default_rng(0)
    lengths = [[9, 3, 14], [30], [6, 17, 7]]  # padding after rows 0 and 2; row 1: one example
    rows = [[rng.integers(5, 500, n) for n in row] for row in lengths]

    packed_loss, packed_grads = _loss_and_grads(model, _batch(rows, 32))
    alone_loss, alone_grads = 0.0, {k: np.zeros_like(v) for k, v in packed_grads.items()}
    for example in (e for row in rows for e in row):
        loss, grads = _loss_and_grads(model, _batch([[example]], 32))
        alone_loss += loss
        for key, grad in grads.items():
            alone_grads[key] += grad

    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
    for key, grad in alone_grads.items():
        scale = float(np.abs(grad).max())
        assert np.abs(packed_grads[key] - grad).max() <= 1e-5 * scale + 1e-7, key


def test_segment_layout_buckets_and_puts_back() -> None:
    segments = np.array([[1] * 40 + [2] * 3 + [3] * 30 + [0] * 7, [1] * 80])
    layout = segment_layout(segments)
    # lengths 80, 40, 30, 3: 40 is under 0.8 * 80; 30 is too, of 40, but only 10 tokens shorter
    assert [tuple(b.shape) for b in layout.buckets] == [(1, 80), (2, 40), (1, 3)]
    longest, middle, short = (np.array(b) for b in layout.buckets)
    assert longest.tolist() == [list(range(80, 160))]
    assert middle[1].tolist() == list(range(43, 73)) + [72] * 10  # right-padded, last token
    assert short.tolist() == [[40, 41, 42]]
    inverse = np.array(layout.inverse)
    assert inverse[80:160].tolist() == list(range(80))  # row 1 is the first bucket's output
    assert inverse[0:40].tolist() == list(range(80, 120))
    assert inverse[43:73].tolist() == list(range(120, 150))
    assert inverse[40:43].tolist() == [160, 161, 162]
    assert inverse[73:80].tolist() == [163] * 7  # padding: the row of zeros after the buckets


def test_other_attention_is_unchanged(tiny_llama, monkeypatch) -> None:
    """The swapped-in function calls mlx-lm's for any other mask: generation is not affected."""
    import sys

    from mlx_lm.models import base

    from ft_models.load import load_mlx
    from ft_train_mlx import segments

    model, _ = load_mlx(tiny_llama, dtype="float32")
    assert use_segmented_attention(model) and use_segmented_attention(model)  # twice: no change
    module = sys.modules[type(model).__module__]
    assert module.scaled_dot_product_attention is segments.scaled_dot_product_attention
    assert base.scaled_dot_product_attention is not segments.scaled_dot_product_attention
    ids = mx.array([[5, 17, 42, 99, 7, 8]])
    swapped = model(ids)
    monkeypatch.setattr(module, "scaled_dot_product_attention", base.scaled_dot_product_attention)
    assert mx.array_equal(model(ids), swapped)


def test_memory_grows_linearly_with_the_row(monkeypatch) -> None:
    """Rows of 64-token examples: a row twice as long needs about twice the memory, not four
    times (the dense block mask's L x L scores). Measured once on the CPU, forward + backward:

        row tokens    segmented    dense
        1024           52 MB       296 MB
        2048          103 MB      1113 MB   (ratio 1.99 vs 3.76)
    """
    model = _mlx_lm_model(
        "llama",
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=16,  # many heads, so that attention scores dominate memory
        num_key_value_heads=4,
    )

    def peak(width: int) -> int:
        ids = np.random.default_rng(0).integers(5, 500, (1, width))
        segments = (np.arange(width) // 64 + 1)[None]
        inputs = model_inputs({"input_ids": ids, "labels": ids, "segment_ids": segments})
        mx.eval(inputs[:4])
        mx.clear_cache()
        mx.reset_peak_memory()
        loss, grads = nn.value_and_grad(model, lambda *a: summed_loss(model, *a))(*inputs)
        mx.eval(loss, grads)
        del loss, grads
        return int(mx.get_peak_memory())

    short, long = peak(1024), peak(2048)
    assert long / short < 2.6, (short, long)
    # below one layer's dense scores at 2,048 tokens (16 heads x 2048^2 float32: 256 MiB)
    assert long < 16 * 2048**2 * 4, long
    assert packing.use_segmented_attention(model)
