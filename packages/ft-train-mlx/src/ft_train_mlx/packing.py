"""From ft-data's numpy batches to MLX inputs, the attention mask of packed rows, and the loss.

A packed row holds several examples (`segment_ids` 1..k, 0 on padding). Attention must stay
inside each example: query q sees key k when both are in the same example and k <= q. mlx-lm's
models build their mask with `create_attention_mask(h, cache)`, which asks the layer's cache
for it (`cache.make_mask`). So a packed batch runs with one `BlockMask` per layer: a stand-in
cache that keeps nothing and answers with the block-diagonal causal mask. Every mlx-lm model
that takes a cache (all of them) gets the mask without a change to its code.

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

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ft_data.batches import IGNORE_INDEX, Batch, shifted_targets

ABSOLUTE_POSITIONS = ("gpt2",)  # model types whose position embeddings packing would break


def block_causal_mask(segment_ids: np.ndarray) -> np.ndarray:
    """The `(batch, 1, length, length)` boolean mask (True: attend) that keeps attention causal
    and inside each example. Padding attends to itself only, so no softmax row is empty."""
    length = segment_ids.shape[1]
    index = np.arange(length)
    causal = index[None, :] <= index[:, None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = (same & causal[None] & (segment_ids[:, None, :] > 0)) | np.eye(length, dtype=bool)[
        None
    ]
    return allowed[:, None]


class BlockMask:
    """A per-layer stand-in for mlx-lm's KV cache: stores nothing, hands out `mask`."""

    offset = 0

    def __init__(self, mask: mx.array) -> None:
        self.mask = mask

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        return self.mask

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return keys, values


Inputs = tuple[mx.array, mx.array, mx.array, mx.array, "mx.array | None"]


def model_inputs(batch: Batch, *, multiple: int = 16) -> Inputs:
    """(ids, index, targets, weights, mask) of `batch` as MLX arrays.

    `index` lists the flat positions (row * width + column) whose next token is a target, and
    `targets` those tokens: the loss needs the logits there only (see `summed_loss`). Columns
    after the last token of every row are cut (to a multiple of `multiple`, so compiled shapes
    repeat): padding at the end of a row changes nothing before it. The mask is only built for
    packed rows; other rows are plainly causal (right padding is never attended to).
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
        mx.array(block_causal_mask(segments)) if packed else None,
    )


def hidden_states(model: nn.Module, ids: mx.array, cache: Any) -> mx.array | None:
    """The last hidden states of an mlx-lm causal LM (its body without the output head), or None
    for a model not shaped as `model.model` + `lm_head` or tied embeddings."""
    body = getattr(model, "model", None)
    if body is None or _head(model) is None:
        return None
    return body(ids, cache)


def _head(model: nn.Module) -> Any:
    if "lm_head" in model:  # mlx-lm builds lm_head only when the embeddings are not tied
        return model.lm_head
    body = getattr(model, "model", None)
    for name in ("embed_tokens", "wte"):
        embedding = getattr(body, name, None)
        if embedding is not None:
            return embedding.as_linear
    return None


def summed_loss(
    model: nn.Module,
    ids: mx.array,
    index: mx.array,
    targets: mx.array,
    weights: mx.array,
    mask: mx.array | None,
) -> mx.array:
    """The summed cross-entropy of the targets (fp32, whatever the logits' dtype).

    The output head runs on the target positions only: over a large vocabulary it is most of a
    small model's work, and prompts and padding (often half the tokens) need no logits.
    """
    cache = [BlockMask(mask)] * len(model.layers) if mask is not None else None
    hidden = hidden_states(model, ids, cache)
    if hidden is None:
        logits = model(ids, cache=cache)
        picked = logits.reshape(-1, logits.shape[-1])[index]
    else:
        picked = _head(model)(hidden.reshape(-1, hidden.shape[-1])[index])
    losses = nn.losses.cross_entropy(picked.astype(mx.float32), targets, reduction="none")
    return (losses * weights).sum()
