"""From ft-data's numpy batches to MLX inputs, attention inside the examples of packed rows, and
the loss.

A packed row holds several examples (`segment_ids` 1..k, 0 on padding). Attention must stay
inside each example: query q sees key k when both are in the same example and k <= q.
`model_inputs` finds the examples of a packed batch once, in numpy (`segments.segment_layout`),
and `summed_loss` runs the model with one `PackedCache` per layer: a stand-in for mlx-lm's KV
cache that keeps nothing and, asked for the attention mask (`create_attention_mask(h, cache)`
calls `cache.make_mask`), answers with the `PackedSegments`. The model's attention then runs
per example (`segments.use_segmented_attention`), in memory linear in the row's length. A model
that does not attend through mlx-lm's `scaled_dot_product_attention` (gemma2) runs one row at a
time with the dense `(1, 1, width, width)` block-diagonal causal mask, and one that asks its cache
for an array gets that mask for the batch: correct, but quadratic in the row's length.

Positions: mlx-lm rotates queries and keys by their place in the row (RoPE), not by
`position_ids`. RoPE scores depend only on the distance between query and key, and attention
never leaves an example, so a packed row computes what its examples compute alone, up to
float rounding. Learned absolute positions (GPT-2) would differ: packing is refused there.

The loss is a sum of token cross-entropies (fp32), never a mean: the loop divides by the
trained tokens of the whole optimizer step, so accumulation and data parallelism give the same
update as one big batch. A label is predicted from the token before it; a label whose token
starts another example (or is padding) is not a target.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ft_data.batches import IGNORE_INDEX, Batch, shifted_targets
from ft_train_mlx.segments import (
    PackedSegments,
    block_causal_mask,
    segment_layout,
    use_segmented_attention,
)

ABSOLUTE_POSITIONS = ("gpt2",)  # model types whose position embeddings packing would break


class PackedCache:
    """A per-layer stand-in for mlx-lm's KV cache: stores nothing, and hands out the mask of a
    packed batch: its `segments` (attention per example), or the dense block mask of
    `segment_ids` where there are no segments or the model asks for an array."""

    offset = 0

    def __init__(self, segment_ids: mx.array, segments: PackedSegments | None = None) -> None:
        self.segment_ids = segment_ids
        self.segments = segments

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        if return_array or self.segments is None:
            return block_causal_mask(self.segment_ids, window_size)
        return dataclasses.replace(self.segments, window=window_size)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return keys, values


Inputs = tuple[mx.array, mx.array, mx.array, mx.array, "PackedSegments | None"]


def model_inputs(batch: Batch, *, multiple: int = 16) -> Inputs:
    """(ids, index, targets, weights, mask) of `batch` as MLX arrays.

    `index` lists the flat positions (row * width + column) whose next token is a target, and
    `targets` those tokens: the loss needs the logits there only (see `summed_loss`). Columns
    after the last token of every row are cut (to a multiple of `multiple`, so compiled shapes
    repeat): padding at the end of a row changes nothing before it. `mask` (the examples' layout)
    is only built for packed rows; for other rows it is None: plainly causal (right padding is
    never attended to).
    """
    segments = batch["segment_ids"]
    used = np.flatnonzero(segments.any(axis=0))
    width = segments.shape[1] if not len(used) else int(used[-1]) + 1
    width = min(segments.shape[1], -(-width // multiple) * multiple)
    segments = segments[:, :width]
    trimmed = {"labels": batch["labels"][:, :width], "segment_ids": segments}
    shifted = shifted_targets(trimmed)
    rows, columns = np.nonzero(shifted != IGNORE_INDEX)
    index = rows * width + columns
    targets = shifted[rows, columns]
    weights = np.ones(len(index), dtype=np.float32)
    if not len(index):  # an idle process' row: one position, weighted 0
        index, targets, weights = (
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros(1, np.float32),
        )
    packed = bool((segments > 1).any())
    return (
        mx.array(batch["input_ids"][:, :width].astype(np.int32)),
        mx.array(index.astype(np.int32)),
        mx.array(targets.astype(np.int32)),
        mx.array(weights),
        segment_layout(segments) if packed else None,
    )


def hidden_states(model: nn.Module, ids: mx.array, cache: Any) -> mx.array | None:
    """The last hidden states of an mlx-lm causal LM (its body without the output head), or None
    for a model not shaped as `model.model` + `lm_head` or tied embeddings."""
    body = getattr(model, "model", None)
    if body is None or _head(model) is None:
        return None
    return body(ids, cache)


def _head(model: nn.Module) -> Any:
    """The output head: what the model's own `__call__` does after its body."""
    head = _projection(model)
    cap = getattr(model, "final_logit_softcapping", None)
    if head is None or not cap:
        return head

    def capped(hidden: mx.array) -> mx.array:
        # Gemma 2 squashes its logits into (-cap, cap) after the projection: the loss must see
        # the logits the model computes (and torch's Gemma2ForCausalLM trains on).
        return mx.tanh(head(hidden) / cap) * cap

    return capped


def _projection(model: nn.Module) -> Any:
    if "lm_head" in model:  # mlx-lm builds lm_head only when the embeddings are not tied
        return model.lm_head
    body = getattr(model, "model", None)
    for name in ("embed_tokens", "wte"):
        embedding = getattr(body, name, None)
        if embedding is not None:
            return embedding.as_linear
    return None


def _outputs(model: nn.Module, ids: mx.array, mask: PackedSegments | None) -> tuple[mx.array, bool]:
    """The model's last hidden states (True) or, without a separable head, its logits (False)."""

    def run(ids: mx.array, cache: Any) -> tuple[mx.array, bool]:
        hidden = hidden_states(model, ids, cache)
        return (model(ids, cache=cache), False) if hidden is None else (hidden, True)

    if mask is None:
        return run(ids, None)
    layers = len(model.layers)
    if use_segmented_attention(model):
        return run(ids, [PackedCache(mask.segment_ids, mask)] * layers)
    # The dense fallback runs one row at a time: a model that builds its own attention may
    # shape its scores so that a batched mask does not broadcast (gemma2 groups the query heads
    # of each key/value head: (batch, kv_heads, repeats, q, k) scores), and a (1, 1, q, k) mask
    # broadcasts against any of them.
    rows = [
        run(ids[r : r + 1], [PackedCache(mask.segment_ids[r : r + 1])] * layers)
        for r in range(ids.shape[0])
    ]
    return mx.concatenate([out for out, _ in rows]), rows[0][1]


def summed_loss(
    model: nn.Module,
    ids: mx.array,
    index: mx.array,
    targets: mx.array,
    weights: mx.array,
    mask: PackedSegments | None,
) -> mx.array:
    """The summed cross-entropy of the targets (fp32, whatever the logits' dtype)."""
    return (token_losses(model, ids, index, targets, mask) * weights).sum()


def token_losses(
    model: nn.Module,
    ids: mx.array,
    index: mx.array,
    targets: mx.array,
    mask: PackedSegments | None,
) -> mx.array:
    """Each target's cross-entropy (fp32), in the order of `index`.

    The output head runs on the target positions only: over a large vocabulary it is most of a
    small model's work, and prompts and padding (often half the tokens) need no logits.
    """
    outputs, hidden = _outputs(model, ids, mask)
    picked = outputs.reshape(-1, outputs.shape[-1])[index]
    if hidden:
        picked = _head(model)(picked)
    return nn.losses.cross_entropy(picked.astype(mx.float32), targets, reduction="none")
