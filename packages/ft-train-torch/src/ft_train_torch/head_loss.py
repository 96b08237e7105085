"""The output layer and the cross-entropy of its logits as one autograd function.

`F.cross_entropy(head(rows).float(), targets)` keeps a float32 copy of the logits, their float32
log-softmax for the backward pass, and in the backward pass fills a float32 zero gradient the
size of the logits, scatters into it, runs the log-softmax's backward and casts the result for
the output layer's matrix product: six passes over `(rows, vocabulary)` float32 numbers (for
SmolLM2's 49,152 words, 0.2 GB per 1,000 rows), 13% of a bf16 LoRA step on a CPU.

`head_cross_entropy` computes the same numbers with less: the logits (in the matrix product's
dtype, as autocast gives them) are kept, their float32 log-softmax is taken a block of rows at a
time and only the targets' values kept, and the backward pass writes `softmax - one_hot` of
each block in place of the logits, in their dtype, before the two matrix products. The loss
and gradients are what the plain form gives (float32 softmax of the same logits, the gradient
rounded to the logits' dtype where autocast's cast would round it), at a third of the memory.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

CACHE_CASTS = True
"""Keep a frozen output layer's autocast copy between steps (off: cast at every step)."""

_CASTS: dict[int, tuple[tuple, torch.Tensor]] = {}
"""Kept casts by the weight's id (a dictionary keyed by tensors would compare them with
`==`); an entry goes when its weight does."""

BLOCK_ROWS = 64
"""Rows whose float32 logits exist at once: 64 x 49,152 x 4 bytes = 12.6 MB for SmolLM2."""


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        rows: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        logits = torch.nn.functional.linear(rows, weight, bias)
        count = len(targets)
        losses = torch.empty(count, dtype=torch.float32, device=logits.device)
        for start in range(0, count, BLOCK_ROWS):
            end = min(start + BLOCK_ROWS, count)
            # log_softmax, not logsumexp: torch's logsumexp is composite, and its exp takes a
            # slow path on the large negative differences a vocabulary's logits have (30x).
            scores = torch.log_softmax(logits[start:end].float(), dim=-1)
            losses[start:end] = -scores.gather(1, targets[start:end, None]).squeeze(1)
        ctx.save_for_backward(rows, weight, logits, targets)
        ctx.done = False
        return losses

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if ctx.done:
            raise RuntimeError(
                "head_cross_entropy's backward pass runs once: its logits became their "
                "gradient (no retain_graph=True through it)"
            )
        ctx.done = True
        rows, weight, logits, targets = ctx.saved_tensors
        count = len(targets)
        # The logits are not needed after this: their gradient takes their place, block by
        # block (a new buffer the size of the logits cost 3-6% of a step in page faults and
        # zeroing). So a second backward pass through one graph (`retain_graph=True`) is not
        # supported; ft's losses make one.
        grad_logits = logits
        grad_logits[count:] = 0  # padding rows: no gradient
        grad = grad.float()
        for start in range(0, count, BLOCK_ROWS):
            end = min(start + BLOCK_ROWS, count)
            block = torch.softmax(logits[start:end].float(), dim=-1)
            block[torch.arange(end - start, device=block.device), targets[start:end]] -= 1.0
            grad_logits[start:end] = block.mul_(grad[start:end, None])
        need_rows, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_rows = grad_logits @ weight if need_rows else None
        grad_weight = grad_logits.t() @ rows if need_weight else None
        grad_bias = grad_logits.sum(0) if need_bias else None  # False for a None bias
        return grad_rows, grad_weight, grad_bias, None


def head_cross_entropy(
    head: torch.nn.Linear, rows: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Each target's cross-entropy (float32, `(len(targets),)`) of `head(rows)`, where
    `targets` are the right words of the first `len(targets)` rows (the rest are padding: their
    logits are computed, as the matrix library wants a steady shape, and get no gradient).
    Under autocast the matrix products run in its dtype, as `head(rows)` would."""
    weight, bias = head.weight, head.bias
    device = rows.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        rows, weight = rows.to(dtype), _cast(weight, dtype)
        bias = _cast(bias, dtype) if bias is not None else None
    elif weight.dtype != rows.dtype:
        rows = rows.to(weight.dtype)
    with torch.autocast(device, enabled=False):
        return _HeadCrossEntropy.apply(rows, weight, bias, targets)


def _cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`. A frozen weight's copy is kept until the weight changes in place:
    a tied output layer (SmolLM2's is its embedding, 49,152 x 576) cannot be stored in the
    autocast dtype as the other frozen layers are (`fused.frozen_linears_to`: the embedding
    stays float32), and casting it anew took 6% of a bf16 LoRA step on a CPU."""
    if weight.dtype == dtype:
        return weight
    if weight.requires_grad or not CACHE_CASTS:
        return weight.to(dtype)  # a trained weight: cast in the graph, as autocast does
    key = (dtype, weight._version, weight.data_ptr(), weight.device)
    kept = _CASTS.get(id(weight))
    if kept is None or kept[0] != key:
        if kept is None:
            weakref.finalize(weight, _CASTS.pop, id(weight), None)
        kept = (key, weight.detach().to(dtype))
        _CASTS[id(weight)] = kept
    return kept[1]
