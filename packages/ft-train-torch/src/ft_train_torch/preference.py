"""DPO and ORPO in PyTorch: from the log-probabilities of a batch's targets to each pair's
log-probabilities (`pair_logps`) and the loss (`dpo_loss`, `orpo_loss`). The batch layout
and the metrics are ft-train-core's (`ft_train_core.preference`).

Both losses are sums over the batch's pairs; the loop divides by the pairs of the whole step
(every micro-batch, every process), so the loss is the mean over pairs, as TRL's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ft_train_core.preference import PairLayout


def pair_logps(token_logps: torch.Tensor, layout: PairLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Each present pair's summed log-probability of its chosen and of its rejected answer
    (fp32), from the log-probabilities of the batch's targets (row-major)."""
    slots = torch.as_tensor(layout.target_slots, device=token_logps.device)
    sums = torch.zeros(2 * layout.slots, dtype=torch.float32, device=token_logps.device)
    sums = sums.index_add(0, slots, token_logps.float())
    present = torch.as_tensor(layout.present, device=token_logps.device)
    return sums[0::2][present], sums[1::2][present]


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's sigmoid loss summed over the pairs, and each pair's chosen and rejected reward
    (beta x the log-probability ratio to the reference). With `label_smoothing` e, the
    conservative form: a pair counts as right with probability 1 - e."""
    chosen_ratio = chosen - ref_chosen
    rejected_ratio = rejected - ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing)
    if label_smoothing:
        losses = losses - F.logsigmoid(-logits) * label_smoothing
    return losses.sum(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurately on both sides of -log 2."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


def orpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: np.ndarray,
    rejected_tokens: np.ndarray,
    *,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO's loss summed over the pairs (the chosen answers' cross-entropy per token, one
    share per pair, minus lambda x the log-sigmoid of the log odds ratio of each pair's mean
    token log-probabilities), and each pair's chosen and rejected reward (lambda x the mean
    token log-probability)."""
    device = chosen.device
    chosen_count = torch.as_tensor(chosen_tokens, dtype=torch.float32, device=device)
    rejected_count = torch.as_tensor(rejected_tokens, dtype=torch.float32, device=device)
    chosen_mean = chosen / chosen_count.clamp(min=1)
    rejected_mean = rejected / rejected_count.clamp(min=1)
    log_odds = (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))
    ratio = F.logsigmoid(log_odds)
    nll = -chosen.sum() / chosen_count.sum().clamp(min=1)
    summed = len(chosen) * nll - lam * ratio.sum()
    return summed, lam * chosen_mean.detach(), lam * rejected_mean.detach()
