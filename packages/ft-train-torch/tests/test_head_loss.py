"""The output layer's cross-entropy in one function (ft_train_torch.head_loss) gives what
`F.cross_entropy(head(rows).float(), targets)` gives, in float32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ft_train_torch.head_loss import BLOCK_ROWS, head_cross_entropy

VOCAB, WIDTH = 1000, 24


def _case(bias: bool, rows: int = 2 * BLOCK_ROWS + 7, padding: int = 5):
    torch.manual_seed(0)
    head = torch.nn.Linear(WIDTH, VOCAB, bias=bias)
    # Spread logits, as a trained vocabulary has: most words far below the right one.
    torch.nn.init.normal_(head.weight, std=2.0)
    hidden = torch.randn(rows + padding, WIDTH, requires_grad=True)
    targets = torch.randint(0, VOCAB, (rows,))
    return head, hidden, targets


def _reference(head, hidden, targets):
    logits = head(hidden)[: len(targets)].float()
    return F.cross_entropy(logits, targets, reduction="none")


def _grads(loss, head, hidden):
    weights = [head.weight] + ([head.bias] if head.bias is not None else [])
    return torch.autograd.grad(loss, [hidden, *weights])


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
def test_float32_losses_and_gradients_are_cross_entropy_s(bias) -> None:
    """Per token and summed (several blocks of rows, a last short one), with the gradients
    of the rows, a trainable weight and its bias; padding rows after the targets get none."""
    head, hidden, targets = _case(bias)
    got = head_cross_entropy(head, hidden, targets)
    want = _reference(head, hidden, targets)
    assert got.dtype == torch.float32 and got.shape == (len(targets),)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    # A weighted sum, so each token's own gradient counts (what a per-token loss feeds).
    weights = torch.rand(len(targets))
    got_grads = _grads((got * weights).sum(), head, hidden)
    want_grads = _grads((want * weights).sum(), head, hidden)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert got_grads[0][len(targets) :].abs().sum() == 0


def test_bf16_autocast_matches_the_autocast_form() -> None:
    """Under bf16 autocast the matrix products run in bf16 as `head(rows)` would (a frozen
    float32 weight, float32 rows), and the softmax in float32: the same loss, the same
    gradient of the rows."""
    head, hidden, targets = _case(bias=False)
    head.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head_cross_entropy(head, hidden, targets)
        want = _reference(head, hidden, targets)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    [got_grad] = torch.autograd.grad(got.sum(), [hidden])
    [want_grad] = torch.autograd.grad(want.sum(), [hidden])
    assert got_grad.dtype == torch.float32
    # The gradient of the logits is rounded to bf16 once in both (autocast's cast there).
    torch.testing.assert_close(got_grad, want_grad, rtol=2e-2, atol=1e-3)


def test_it_keeps_only_the_logits_in_their_dtype() -> None:
    """What the backward pass keeps: the bf16 logits, not a float32 copy or log-softmax."""
    head, hidden, targets = _case(bias=False)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    keep = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.autocast("cpu", dtype=torch.bfloat16), keep:
        head_cross_entropy(head, hidden, targets)
    vocab_wide = [t for t in saved if t.shape[-1] == VOCAB and t.shape[0] == hidden.shape[0]]
    assert [t.dtype for t in vocab_wide] == [torch.bfloat16]


def test_a_second_backward_pass_is_refused_not_wrong() -> None:
    """The backward pass writes the gradient over the kept logits: a second one through the
    same graph would read the gradient as logits, so it is refused."""
    head, hidden, targets = _case(bias=False)
    loss = head_cross_entropy(head, hidden, targets).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()


def test_a_frozen_weight_is_cast_once_until_it_changes() -> None:
    """Under autocast a frozen output layer (a tied embedding cannot be stored in bf16) is
    cast once and the copy reused step after step; a change to the weight in place (a
    resumed or reloaded state) makes a new copy, and a trained weight is cast in the graph."""
    from ft_train_torch import head_loss

    head, hidden, targets = _case(bias=False)
    head.weight.requires_grad_(False)
    watched = id(head.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = head_cross_entropy(head, hidden, targets)
        copy = head_loss._CASTS[watched][1]
        second = head_cross_entropy(head, hidden, targets)
    assert head_loss._CASTS[watched][1] is copy  # the second step reused the first one's
    assert copy.dtype == torch.bfloat16 and torch.equal(copy, head.weight.to(torch.bfloat16))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    with torch.no_grad():
        head.weight.mul_(0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = head_cross_entropy(head, hidden, targets)
        want = _reference(head, hidden, targets)
    torch.testing.assert_close(after, want, rtol=1e-6, atol=1e-5)
    assert not torch.equal(after, first)
    assert head_loss._CASTS[watched][1] is not copy
    # A trained weight gets its gradient through the cast, as under autocast.
    head.weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_cross_entropy(head, hidden, targets).sum()
    (grad,) = torch.autograd.grad(loss, [head.weight])
    assert grad.dtype == torch.float32 and grad.abs().sum() > 0
    assert watched in head_loss._CASTS
    del head, loss  # the loss's graph holds the weight too
    import gc

    gc.collect()
    assert watched not in head_loss._CASTS  # the copy goes with its weight
