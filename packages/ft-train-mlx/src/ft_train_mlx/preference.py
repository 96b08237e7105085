"""DPO and ORPO in MLX: the torch trainer's preference losses (`ft_train_torch.preference`)
over mlx-lm models. The batch layout of pairs and the metrics are ft-train-core's
(`ft_train_core.preference`).

`Preference` is what the loop trains a preference objective with: per batch, the reference
log-probabilities (DPO: the model with its adapters swapped out for their base layers, or for
full fine-tuning the stored ones), then the loss and its gradients, the rewards added up for
the step's metrics. Both losses are sums over pairs; the loop divides by the step's pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from ft_data.batches import Batch
from ft_data.hdf5 import PreparedDataset
from ft_train_core.preference import (
    PairBatches,
    PairLayout,
    PreferenceTotals,
    compute_reference,
    dataset_source,
    load_reference,
    pair_batches,
    pair_count,
    pair_layout,
    reference_file,
    save_reference,
)
from ft_train_mlx.packing import model_inputs, token_losses

LOG_HALF = -0.6931471805599453


def log1mexp(x: mx.array) -> mx.array:
    """log(1 - exp(x)) for x < 0, accurately on both sides of -log 2."""
    return mx.where(x < LOG_HALF, mx.log1p(-mx.exp(x)), mx.log(-mx.expm1(x)))


def pair_inputs(batch: Batch, layout: PairLayout) -> tuple[mx.array, mx.array, int]:
    """(slot of each target, present slots, slots) as MLX arrays; an idle process' stand-in
    row has one target weighted 0 (`packing.model_inputs`), put in slot 0."""
    slots = layout.target_slots if len(layout.target_slots) else np.zeros(1, np.int64)
    return (
        mx.array(slots.astype(np.int32)),
        mx.array(layout.present.astype(np.int32)),
        layout.slots,
    )


def pair_logps(
    model: nn.Module, inputs: tuple[Any, ...], slots: mx.array, present: mx.array, count: int
) -> tuple[mx.array, mx.array]:
    """Each present pair's summed log-probability of its chosen and rejected answer (fp32)."""
    ids, index, targets, weights, mask = inputs
    logps = -token_losses(model, ids, index, targets, mask) * weights
    sums = mx.zeros((2 * count,), dtype=mx.float32).at[slots].add(logps)
    return sums[0::2][present], sums[1::2][present]


def dpo_loss(
    chosen: mx.array,
    rejected: mx.array,
    ref_chosen: mx.array,
    ref_rejected: mx.array,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[mx.array, mx.array, mx.array]:
    """DPO's sigmoid loss summed over the pairs (conservative with `label_smoothing`), and
    each pair's chosen and rejected reward."""
    chosen_ratio = chosen - ref_chosen
    rejected_ratio = rejected - ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -nn.log_sigmoid(logits) * (1 - label_smoothing)
    if label_smoothing:
        losses = losses - nn.log_sigmoid(-logits) * label_smoothing
    return (
        losses.sum(),
        mx.stop_gradient(beta * chosen_ratio),
        mx.stop_gradient(beta * rejected_ratio),
    )


def orpo_loss(
    chosen: mx.array,
    rejected: mx.array,
    chosen_tokens: np.ndarray,
    rejected_tokens: np.ndarray,
    *,
    lam: float,
) -> tuple[mx.array, mx.array, mx.array]:
    """ORPO's loss summed over the pairs (as `ft_train_torch.preference.orpo_loss`), and each
    pair's chosen and rejected reward (lambda x the mean token log-probability)."""
    chosen_count = mx.array(np.maximum(chosen_tokens, 1).astype(np.float32))
    rejected_count = mx.array(np.maximum(rejected_tokens, 1).astype(np.float32))
    chosen_mean = chosen / chosen_count
    rejected_mean = rejected / rejected_count
    log_odds = (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))
    ratio = nn.log_sigmoid(log_odds)
    nll = -chosen.sum() / max(float(np.sum(chosen_tokens)), 1.0)
    summed = len(chosen_tokens) * nll - lam * ratio.sum()
    return summed, mx.stop_gradient(lam * chosen_mean), mx.stop_gradient(lam * rejected_mean)


@contextlib.contextmanager
def base_layers(model: nn.Module, paths: list[str]) -> Iterator[None]:
    """The model without its adapters: each adapted module (LoRA, DoRA) swapped for the base
    layer it wraps, and back. The reference of DPO, with no second copy of the weights."""
    modules = dict(model.named_modules())
    adapted = [(path, modules[path]) for path in paths]
    model.update_modules(tree_unflatten([(path, module.linear) for path, module in adapted]))
    try:
        yield
    finally:
        model.update_modules(tree_unflatten(adapted))


@dataclass
class Preference:
    """A preference objective over `model`: what the loop calls instead of the supervised
    loss (see the module docstring)."""

    model: nn.Module
    method: Any  # ft_config.MethodConfig
    paths: list[str]  # the adapted modules (none for full fine-tuning)
    totals: PreferenceTotals = field(default_factory=PreferenceTotals)
    tables: dict[bool, tuple[mx.array, mx.array]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._grad = nn.value_and_grad(self.model, self._loss)

    def count(self, batch: Batch) -> int:
        return pair_count(batch)

    def _arrays(self, batch: Batch, training: bool) -> tuple[Any, ...]:
        layout = pair_layout(batch)
        inputs = model_inputs(batch)
        slots, present, count = pair_inputs(batch, layout)
        if self.method.objective == "dpo":
            reference = self._reference(inputs, layout, slots, present, count, training)
        else:
            reference = (None, None)
        return inputs, slots, present, count, layout, reference

    def _reference(
        self,
        inputs: tuple[Any, ...],
        layout: PairLayout,
        slots: mx.array,
        present: mx.array,
        count: int,
        training: bool,
    ) -> tuple[mx.array, mx.array]:
        if self.tables:
            chosen, rejected = self.tables[training]
            ids = mx.array(layout.pair_ids.astype(np.int32))
            return chosen[ids], rejected[ids]
        with base_layers(self.model, self.paths):
            chosen, rejected = pair_logps(self.model, inputs, slots, present, count)
            mx.eval(chosen, rejected)
        return chosen, rejected

    def _loss(
        self,
        inputs: tuple[Any, ...],
        slots: mx.array,
        present: mx.array,
        count: int,
        layout: PairLayout,
        reference: tuple[Any, Any],
    ) -> tuple[mx.array, mx.array, mx.array]:
        chosen, rejected = pair_logps(self.model, inputs, slots, present, count)
        method = self.method
        if method.objective == "dpo":
            return dpo_loss(
                chosen,
                rejected,
                *reference,
                beta=method.beta,
                label_smoothing=method.label_smoothing,
            )
        return orpo_loss(
            chosen, rejected, layout.chosen_tokens, layout.rejected_tokens, lam=method.orpo_lambda
        )

    def grads(self, batch: Batch) -> tuple[mx.array, Any]:
        """The batch's summed loss and its gradients; its rewards go to `totals`."""
        (summed, chosen_rewards, rejected_rewards), grads = self._grad(
            *self._arrays(batch, training=True)
        )
        self.totals.add(np.array(chosen_rewards), np.array(rejected_rewards))
        return summed, grads

    def loss(self, batch: Batch) -> float:
        """The batch's summed loss (an evaluation: no gradients); its rewards go to `totals`."""
        summed, chosen_rewards, rejected_rewards = self._loss(*self._arrays(batch, False))
        self.totals.add(np.array(chosen_rewards), np.array(rejected_rewards))
        return float(summed.item())

    # -- full fine-tuning's stored reference -----------------------------------------------------

    def store_reference(
        self,
        run_dir: Path,
        sets: list[tuple[bool, PreparedDataset | None, PairBatches | None]],
        *,
        resumed: bool,
        is_main: bool,
    ) -> list[str]:
        """Full fine-tuning with DPO: each set's pairs' log-probabilities under the base,
        computed once before the first step and stored in the run folder (read back on resume,
        when the weights are no longer the base's). Returns what to tell the user."""
        told = []
        for training, dataset, batches in sets:
            if dataset is None or batches is None:
                continue
            role = "training" if training else "validation"
            path, source = reference_file(run_dir, role), dataset_source(dataset)
            found = load_reference(path, len(dataset), source)
            if found is None and resumed:
                raise ValueError(
                    f"{path}: the reference log-probabilities of this run's {role} pairs are "
                    "missing or for other data; a full fine-tune resumes in its own run "
                    "folder, with the data it started with"
                )
            if found is None:
                found = self._compute(dataset, batches)
                if is_main:
                    save_reference(path, *found, source=source)
                told.append(f"reference log-probabilities of the {role} pairs: {path}")
            self.tables[training] = (
                mx.array(found[0].astype(np.float32)),
                mx.array(found[1].astype(np.float32)),
            )
        return told

    def _compute(
        self, dataset: PreparedDataset, batches: PairBatches
    ) -> tuple[np.ndarray, np.ndarray]:
        ordered = pair_batches(dataset, batches)
        ordered.shuffle = False
        self.model.eval()

        def logps(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
            layout = pair_layout(batch)
            slots, present, count = pair_inputs(batch, layout)
            chosen, rejected = pair_logps(self.model, model_inputs(batch), slots, present, count)
            return np.array(chosen, dtype=np.float64), np.array(rejected, dtype=np.float64)

        found = compute_reference(ordered, len(dataset), logps)
        self.model.train()
        return found
