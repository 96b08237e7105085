"""Attention over packed rows, one example at a time: memory linear in the row's length.

A packed row holds several examples one after another (ft-data's `segment_ids` 1..k, 0 on
padding). Attention must stay inside each example. A `(batch, 1, L, L)` block-diagonal mask
says so, but it costs L x L per row (and SDPA's CPU kernels keep a float copy of it per layer
for the backward pass), so a user's 2,048-token rows paid for 2048^2 where their 100-token
examples need 100^2 each.

Here the examples themselves are attended to, as varlen kernels (FlashAttention's
`cu_seqlens`) do: the examples of a batch are grouped by length into a few buckets, each
bucket's queries, keys and values are gathered into a `(examples, heads, bucket_length, dim)`
block, right-padded, and attended with `is_causal=True`, which lets SDPA take its flash kernel
(no score matrix is stored, on the CPU too). Right padding never reaches a real position under
a causal mask, so no mask is needed. The outputs are put back in row order by one more gather.
Only gathers: autograd keeps index tensors, not copies of the activations.

It plugs into transformers as an attention implementation (`AttentionInterface`), named
`ATTENTION`, with no mask function: transformers then builds no mask at all, and the layout
comes in the forward's keyword arguments (`segments=`), which transformers passes down to every
attention call. Every model whose attention goes through `ALL_ATTENTION_FUNCTIONS` (Llama,
Mistral, Qwen2/3, Gemma 1-3, Phi-3, ...) works unchanged, with what each layer passes:
- `sliding_window` (Mistral, Qwen2, the sliding layers of Gemma 2/3): an example longer than
  the window attends through a banded mask of its bucket's length only;
- `softcap` (Gemma 2) and attention sinks (`module.sinks`, gpt-oss): SDPA has neither, so
  those buckets go through plain matmul attention, which keeps each example's scores
  (quadratic in the example's length, not the row's).

Under bf16 autocast on a CPU without AMX the attention itself runs in float32 (`_float32_here`):
torch's bf16 flash kernels there are slower than its float32 ones, so the step is faster, and
the scores more exact.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ATTENTION = "ft_packed"
"""The name of ft's attention implementation in transformers' `AttentionInterface`."""

BUCKET_RATIO = 0.8
"""An example joins a bucket when it is at least this share of the bucket's longest: the
padding then wastes at most 1 - 0.8 of the gathered tokens (and 1 - 0.8^2 of the scores)."""


class Segments:
    """Where the examples of a `(batch, length)` batch are, as the attention function needs it.

    `buckets`: per bucket, the flat positions (`row * length + column`) of its examples,
    `(examples, bucket_length)`, right-padded by repeating each example's last position.
    `order`: for every flat position of the batch, its place in the concatenated outputs of
    the buckets (`examples * bucket_length` each, in bucket order); padding points one past
    the end, at a row of zeros. A plain class (not a dataclass), so DDP's input mover leaves it
    alone: its tensors are made on the model's device already.
    """

    def __init__(
        self, buckets: list[torch.Tensor], order: torch.Tensor, shape: tuple[int, int]
    ) -> None:
        self.buckets = buckets
        self.order = order
        self.shape = shape

    @classmethod
    def of(cls, segment_ids: np.ndarray, device: torch.device | str = "cpu") -> Segments:
        """The layout of ft-data's `segment_ids` (`(batch, length)`, 1..k, 0 on padding)."""
        segment_ids = np.asarray(segment_ids)
        rows, length = segment_ids.shape
        flat = segment_ids.reshape(-1)
        changes = np.ones(flat.size, dtype=bool)
        changes[1:] = flat[1:] != flat[:-1]
        changes[::length] = True  # a row always starts a new run
        starts = np.flatnonzero(changes)
        lengths = np.diff(np.append(starts, flat.size))
        real = flat[starts] > 0
        starts, lengths = starts[real], lengths[real]
        by_length = np.argsort(-lengths, kind="stable")
        order = np.full(flat.size, 0, dtype=np.int64)
        buckets: list[torch.Tensor] = []
        placed = 0
        i = 0
        while i < len(by_length):
            longest = int(lengths[by_length[i]])
            j = i
            while j < len(by_length) and lengths[by_length[j]] >= BUCKET_RATIO * longest:
                j += 1
            members = by_length[i:j]
            offsets = np.arange(longest)
            # (examples, longest) flat positions, the tail repeating each example's last one.
            spans = starts[members, None] + np.minimum(offsets[None, :], lengths[members, None] - 1)
            buckets.append(torch.as_tensor(spans, device=device))
            for k, member in enumerate(members):
                start, size = int(starts[member]), int(lengths[member])
                order[start : start + size] = placed + k * longest + np.arange(size)
            placed += len(members) * longest
            i = j
        order[flat == 0] = placed  # padding: the zero row after every bucket's output
        return cls(buckets, torch.as_tensor(order, device=device), (rows, length))


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    segments: Segments | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: `query` `(batch, heads, length, dim)`,
    `key`/`value` `(batch, kv_heads, length, dim)`; returns `(batch, length, heads, dim)`.

    Without `segments` (a caller that did not pass the layout) every row is one causal
    sequence, right-padded: what ft's unpacked batches are."""
    batch, heads, length, dim = query.shape
    if segments is None:
        segments = Segments.of(np.ones((batch, length), dtype=np.int64), query.device)
    if segments.shape != (batch, length):
        raise ValueError(
            f"the packed layout is for batches of {segments.shape}, the model got {(batch, length)}"
        )
    kv_heads = key.shape[1]
    sinks = getattr(module, "sinks", None)
    # (batch * length, heads, dim): one token per row, so a bucket is a single gather.
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, kv_heads, key.shape[-1])
    v = value.transpose(1, 2).reshape(batch * length, kv_heads, value.shape[-1])
    p = dropout if module.training else 0.0
    if _float32_here(q.device):
        with torch.autocast(q.device.type, enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            outputs = _buckets(q, k, v, segments, heads, scaling, sliding_window, softcap, sinks, p)
    else:
        outputs = _buckets(q, k, v, segments, heads, scaling, sliding_window, softcap, sinks, p)
    outputs.append((outputs[0] if outputs else q).new_zeros(1, heads, value.shape[-1]))
    joined = torch.cat(outputs)
    return joined[segments.order].view(batch, length, heads, value.shape[-1]), None


def _buckets(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: Segments,
    heads: int,
    scaling: float | None,
    sliding_window: int | None,
    softcap: float | None,
    sinks: torch.Tensor | None,
    p: float,
) -> list[torch.Tensor]:
    """Each bucket's attention output, `(examples x span, heads, dim)`."""
    plain = softcap is not None or sinks is not None
    outputs = []
    for index in segments.buckets:
        qb, kb, vb = (x[index].transpose(1, 2) for x in (q, k, v))  # (n, heads, span, dim)
        span = index.shape[1]
        window = sliding_window if sliding_window is not None and span > sliding_window else None
        if plain:
            out = _matmul_attention(qb, kb, vb, scaling, softcap, sinks, window, p)
        elif window is not None:
            mask = _band(span, window, qb.device)
            out = F.scaled_dot_product_attention(
                qb, kb, vb, attn_mask=mask, dropout_p=p, scale=scaling, enable_gqa=True
            )
        else:
            out = F.scaled_dot_product_attention(
                qb, kb, vb, is_causal=True, dropout_p=p, scale=scaling, enable_gqa=True
            )
        outputs.append(out.transpose(1, 2).reshape(-1, heads, out.shape[-1]))
    return outputs


FLOAT32_ON_CPU: bool | None = None
"""Attention in float32 under bf16 autocast on a CPU: None decides by the CPU (float32 where it
has no AMX), True or False forces it (for an A/B)."""


def _float32_here(device: torch.device) -> bool:
    """Whether attention should leave bf16 autocast here: on a CPU without AMX, torch's bf16
    flash-attention kernels are slower than its float32 ones (2-core Zen 4 with AVX512-BF16:
    a bf16 LoRA step went from 613-634 to 646-668 tokens/s, in-process A/B), and float32 is
    the more exact. With AMX, or on a GPU, bf16 attention stays."""
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    if torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    if FLOAT32_ON_CPU is not None:
        return FLOAT32_ON_CPU
    return not _has_amx()


@functools.cache
def _has_amx() -> bool:
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def _band(span: int, window: int, device: torch.device) -> torch.Tensor:
    """`(span, span)` booleans: causal, and no further back than `window - 1` tokens (as
    transformers' sliding-window masks: key j is seen from query i when i - window < j <= i)."""
    index = torch.arange(span, device=device)
    distance = index[:, None] - index[None, :]
    return (distance >= 0) & (distance < window)


def _matmul_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scaling: float | None,
    softcap: float | None,
    sinks: torch.Tensor | None,
    window: int | None,
    dropout: float,
) -> torch.Tensor:
    """Attention as transformers' eager functions compute it (soft-capped scores, sinks), on
    one bucket: `(n, heads, span, dim)` queries, `(n, kv_heads, span, dim)` keys and values."""
    heads, kv_heads, span = q.shape[1], k.shape[1], q.shape[2]
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    index = torch.arange(span, device=q.device)
    allowed = index[None, :] <= index[:, None]
    if window is not None:
        allowed = _band(span, window, q.device)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if sinks is not None:
        sink = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, span, 1).to(scores.dtype)
        scores = torch.cat([scores, sink], dim=-1)
    # Softmax in float32 at least, as transformers' eager attention does for 16-bit inputs.
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    weights = weights.to(q.dtype)
    if sinks is not None:
        weights = weights[..., :-1]
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights, v)


def register() -> str:
    """Make `ATTENTION` known to transformers (idempotent); returns the name to load models with."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    return ATTENTION
