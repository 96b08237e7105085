"""Attention over packed rows, one example at a time: memory linear in the row's length.

A packed row holds several examples one after another (`segment_ids` 1..k, 0 on padding), and
attention must stay inside each example. A dense block-diagonal mask would do that at the cost
of a `length x length` score matrix per head and layer (on the CPU, and in every backward
pass), most of it masked out: a row of 2,048 tokens holding twenty 100-token examples would pay
for 2048^2 scores instead of 20 x 100^2.

So the examples are attended to separately. `segment_layout` (numpy, once per batch) finds every
example (row, start, length) and groups them into a few buckets of similar length; each bucket
is a gather index `(examples, bucket length)` into the batch's flat token axis, right-padded
with the example's last token (under a causal mask, padding on the right never changes a real
position). `segmented_attention` gathers each bucket's queries, keys and values, runs
`mx.fast.scaled_dot_product_attention` with a causal mask, and puts the outputs back with one
more gather (`inverse`): gathers only, so the backward pass is the framework's own.

mlx-lm's model modules call `scaled_dot_product_attention` from `mlx_lm.models.base` with the
mask their cache made (`cache.make_mask`). `use_segmented_attention(model)` swaps that name in
the model's own modules for a wrapper that attends per example when the mask is a
`PackedSegments`, and calls mlx-lm's function otherwise. Models whose modules build attention
themselves (gemma2, with its soft-capping) get the dense block mask (`block_causal_mask`) instead,
one row at a time (see `packing`); a model that asks its cache for an array (`return_array=True`)
gets it for the whole batch. Both are correct, but quadratic in the row's length.

Sliding windows (gemma3's local layers, llama-family `layer_types`): mlx-lm asks the cache for
the mask with `window_size`. A bucket no longer than the window runs plainly causal; a longer
one gets a banded causal mask of its own `bucket length x bucket length`, bounded by the length
of its examples, never by the row's.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models import base as mlx_lm_base

BUCKET_RATIO = 0.8  # a new bucket for an example shorter than this share of the bucket's longest
BUCKET_SLACK = 16  # ...unless it is at most this many tokens shorter (few buckets of short ones)


@dataclasses.dataclass(frozen=True)
class PackedSegments:
    """The examples of a packed batch, as `segment_layout` found them.

    `buckets[i]` (examples, length_i) holds flat token positions (row * width + column); the
    outputs of all buckets, flattened in order and followed by one row of zeros, are put back in
    place by `inverse` (batch * width), whose padding positions point at the zeros. `window` is
    the sliding window of the layers this instance is for (None: plain causal).
    """

    segment_ids: mx.array  # (batch, width) int32, for `block_causal_mask`
    inverse: mx.array
    buckets: tuple[mx.array, ...]
    window: int | None = None


def block_causal_mask(segment_ids: mx.array, window: int | None = None) -> mx.array:
    """The `(batch, 1, width, width)` boolean mask (True: attend) that keeps attention causal,
    inside each example and, with `window`, to the last `window` positions: for models that
    cannot attend per example. Padding attends to itself only, so no softmax row is empty."""
    index = mx.arange(segment_ids.shape[1])
    allowed = index[None, :] <= index[:, None]
    if window is not None:
        allowed = allowed & (index[:, None] < index[None, :] + window)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return ((same & allowed[None]) | mx.eye(segment_ids.shape[1], dtype=mx.bool_)[None])[:, None]


def segment_layout(
    segment_ids: np.ndarray, *, ratio: float = BUCKET_RATIO, slack: int = BUCKET_SLACK
) -> PackedSegments:
    """The examples of `segment_ids` (batch, width) and their buckets.

    An example is a run of one non-zero id in a row. Examples sorted by length fill a bucket
    until one is shorter than `ratio` times the bucket's longest (and more than `slack` tokens
    shorter): the padding of a bucket stays under about a quarter of its work.
    """
    rows, width = segment_ids.shape
    real = segment_ids > 0
    first = np.ones_like(real)
    first[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    last = np.ones_like(real)
    last[:, :-1] = segment_ids[:, :-1] != segment_ids[:, 1:]
    starts = np.flatnonzero(first & real)  # flat positions, in the same order as the ends
    lengths = np.flatnonzero(last & real) + 1 - starts

    groups: list[list[int]] = []
    for example in np.argsort(-lengths, kind="stable"):
        length = lengths[example]
        if groups:
            longest = lengths[groups[-1][0]]
            if length >= ratio * longest or longest - length <= slack:
                groups[-1].append(int(example))
                continue
        groups.append([int(example)])

    inverse = np.zeros(rows * width, np.int64)
    buckets, done = [], 0
    for group in groups:
        at, size = starts[group][:, None], lengths[group][:, None]
        steps = np.arange(size.max())[None, :]
        buckets.append(at + np.minimum(steps, size - 1))
        inside = steps < size
        inverse[(at + steps)[inside]] = done + np.flatnonzero(inside.reshape(-1))
        done += inside.size
    inverse[~real.reshape(-1)] = done  # the row of zeros after the last bucket
    return PackedSegments(
        segment_ids=mx.array(segment_ids.astype(np.int32)),
        inverse=mx.array(inverse.astype(np.int32)),
        buckets=tuple(mx.array(b.astype(np.int32)) for b in buckets),
    )


def segmented_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    segments: PackedSegments,
    *,
    scale: float,
    sinks: mx.array | None = None,
) -> mx.array:
    """`mx.fast.scaled_dot_product_attention` of `(batch, heads, width, dim)` inputs, each example
    of `segments` attending to itself only; the output has the queries' shape. Keys and values
    may have fewer heads (grouped-query attention): the fast kernel takes them as they are."""
    batch, heads, width, dim = queries.shape

    def tokens(x: mx.array) -> mx.array:  # (batch * width, heads, dim)
        return x.transpose(0, 2, 1, 3).reshape(batch * width, x.shape[1], x.shape[3])

    q, k, v = tokens(queries), tokens(keys), tokens(values)
    outputs = []
    for index in segments.buckets:
        count, length = index.shape

        def per_example(x: mx.array, index: mx.array = index) -> mx.array:
            return x[index].transpose(0, 2, 1, 3)  # (examples, heads, length, dim)

        mask: str | mx.array = "causal"
        if segments.window is not None and length > segments.window:
            at = mx.arange(length)
            mask = (at[:, None] >= at[None, :]) & (at[:, None] < at[None, :] + segments.window)
        out = mx.fast.scaled_dot_product_attention(
            per_example(q), per_example(k), per_example(v), scale=scale, mask=mask, sinks=sinks
        )
        outputs.append(out.transpose(0, 2, 1, 3).reshape(count * length, heads, -1))
    outputs.append(mx.zeros((1, heads, outputs[0].shape[-1] if outputs else dim), queries.dtype))
    flat = mx.concatenate(outputs, axis=0)[segments.inverse]
    return flat.reshape(batch, width, heads, -1).transpose(0, 2, 1, 3)


_mlx_lm_attention = mlx_lm_base.scaled_dot_product_attention


def scaled_dot_product_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    cache: Any,
    scale: float,
    mask: Any,
    **extra: Any,
) -> mx.array:
    """mlx-lm's `scaled_dot_product_attention`, per example when `mask` is a `PackedSegments`."""
    if isinstance(mask, PackedSegments):
        return segmented_attention(queries, keys, values, mask, scale=scale, **extra)
    return _mlx_lm_attention(queries, keys, values, cache=cache, scale=scale, mask=mask, **extra)


def use_segmented_attention(model: Any) -> bool:
    """Make `model` attend per example when its cache hands out a `PackedSegments`; False (and
    nothing changed) when its modules do not attend through mlx-lm's function.

    The model modules import the function by name (`from .base import
    scaled_dot_product_attention`), so the name is swapped in each module that holds a class of
    the model. The wrapper does what mlx-lm does for any other mask, so generation and every
    other model in the process are unaffected; swapping twice changes nothing.
    """
    known = getattr(model, "_ft_segmented_attention", None)
    if known is not None:
        return bool(known)
    names = {type(model).__module__} | {type(m).__module__ for m in model.modules()}
    found = False
    for name in names:
        module = sys.modules.get(name)
        held = getattr(module, "scaled_dot_product_attention", None)
        if held is _mlx_lm_attention or held is scaled_dot_product_attention:
            module.scaled_dot_product_attention = scaled_dot_product_attention  # type: ignore[union-attr]
            found = True
    model._ft_segmented_attention = found
    return found
