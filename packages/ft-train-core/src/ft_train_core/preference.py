"""Preference training (`method.objective: dpo | orpo`): what both trainers share.

**The batch layout of pairs.** A pair's chosen and rejected sides go in the same row, one after
the other, as two examples of a packed row: segment `2k - 1` is the chosen side of the row's
k-th pair, segment `2k` its rejected side (positions restart at 0 for each, as for any packed
example). Both trainers already keep attention inside each example of a row, so the two sides
never see each other, and a row may hold several pairs (`data.packing`) with their attention
just as separate. `PairBatches` makes these batches (ft-data's `Batches`, a pair for an
example); each batch has, besides ft-data's keys, `pair_ids` (rows, pairs a row holds at most):
the dataset index of each pair, -1 where a row holds fewer.

**Per-pair sums.** `pair_layout(batch)` says, for every trained target of the batch (row-major,
the order in which both trainers pick their target positions), which slot (`2 * pair slot +
side`) its log-probability adds to. A backend computes the targets' log-probabilities, adds them
up by slot, and has each pair's chosen and rejected log-probabilities; the losses are in the
trainers (`ft_train_torch.preference`, `ft_train_mlx.preference`).

**The reference** (DPO): for adapter methods, the model with its adapter off, computed on each
batch; for full fine-tuning, the base's log-probabilities of every pair computed once before
training and stored in the run folder (`reference_file`), read back on resume.

**Metrics** (`PREFERENCE_METRICS`, in every `step` and `eval` event): `rewards_chosen` and
`rewards_rejected` (the mean reward of the chosen and rejected answers: beta times the
log-probability ratio to the reference for DPO, lambda times the mean token log-probability for
ORPO, as TRL reports `rewards/chosen` and `rewards/rejected`), `margin` (their mean difference)
and `accuracy` (the share of pairs whose chosen answer has the higher reward). The loss is the
mean over pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ft_data.batches import IGNORE_INDEX, Batch, Batches, shifted_targets
from ft_data.hdf5 import PreparedDataset
from ft_train_core.protocol import PREFERENCE_METRICS as PREFERENCE_METRICS  # the event keys

OBJECTIVES = ("sft", "dpo", "orpo")
PREFERENCE_OBJECTIVES = ("dpo", "orpo")


class PreferenceDataError(ValueError):
    """A preference objective given data without pairs (or the reverse): says which file and
    what to do."""


def is_preference(config: Any) -> bool:
    """Whether `config` trains on preference pairs (`method.objective` dpo or orpo)."""
    return getattr(config.method, "objective", "sft") in PREFERENCE_OBJECTIVES


def check_preference_data(config: Any, dataset: PreparedDataset, role: str = "training") -> None:
    """Refuse a preference objective on a dataset without rejected answers, naming the file
    and what to do. `role`: `training` or `validation`, for the message."""
    if not is_preference(config) or dataset.has_rejected:
        return
    objective = config.method.objective
    raise PreferenceDataError(
        f"method.objective: {objective} trains on preference pairs, and the {role} data "
        f"{dataset.path} has none (it was prepared from data without a rejected answer). "
        "Prepare preference pairs (rows with `prompt`, `chosen` and `rejected`, or the "
        "sharegpt_preference / openai_preference formats: docs/data.md) with `ft dataset "
        "prepare`, or set method.objective: sft to train on the answers alone."
    )


# -- batches ------------------------------------------------------------------------------------


class PairView:
    """A dataset of pairs as `Batches` plans it: one example a pair, as long as both its sides
    (they share a row)."""

    def __init__(self, dataset: PreparedDataset) -> None:
        self.dataset = dataset
        self.path = dataset.path
        self.attrs = dataset.attrs
        self.lengths = np.asarray(dataset.lengths) + np.asarray(dataset.rejected_lengths)
        self.num_tokens = int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> None:
        return None

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        (chosen, chosen_mask), (rejected, rejected_mask) = self.sides(index)
        return np.concatenate([chosen, rejected]), np.concatenate([chosen_mask, rejected_mask])

    def sides(self, index: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        return self.dataset[index], self.dataset.rejected(index)


class PairBatches(Batches):
    """ft-data's `Batches` over preference pairs: a pair is one unit (packed or padded like an
    example), laid out in its row as two examples, chosen then rejected; each batch also has
    `pair_ids` (see the module docstring). Seeded, resumable from any step, like `Batches`."""

    def __init__(self, dataset: PreparedDataset, **options: Any) -> None:
        if not dataset.has_rejected:
            raise PreferenceDataError(f"{dataset.path}: not a dataset of preference pairs")
        if options.get("mode") == "chunk":
            raise ValueError("preference pairs are batched padded or packed, not in chunks")
        super().__init__(PairView(dataset), **options)  # type: ignore[arg-type]

    def _row(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        view: PairView = self.dataset  # type: ignore[assignment]
        parts = [side for i in members for side in view.sides(int(i))]
        tokens = np.concatenate([tokens for tokens, _ in parts])
        mask = np.concatenate([mask for _, mask in parts])
        positions = np.concatenate([np.arange(len(tokens)) for tokens, _ in parts])
        segments = np.concatenate(
            [np.full(len(tokens), k, dtype=np.int64) for k, (tokens, _) in enumerate(parts, 1)]
        )
        return tokens, mask, positions, segments

    def batch_at(self, epoch: int, index: int) -> Batch:
        batch = super().batch_at(epoch, index)
        rows = self.rows(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        ids = np.full((len(rows), max(len(m) for m in rows)), -1, dtype=np.int64)
        for row, members in enumerate(rows):
            ids[row, : len(members)] = members
        batch["pair_ids"] = ids
        return batch


def pair_batches(dataset: PreparedDataset, batches: Batches) -> PairBatches:
    """`batches`' settings (rows, row length, mode, seed, order, padding) over the pairs of
    `dataset`."""
    return PairBatches(
        dataset,
        batch_size=batches.batch_size,
        max_seq_length=batches.max_seq_length,
        mode=batches.mode,
        seed=batches.seed,
        shuffle=batches.shuffle,
        drop_last=batches.drop_last,
        pad_to=batches.pad_to,
        pad_id=batches.pad_id,
        pad_multiple=batches.pad_multiple,
    )


def evaluation_pairs(
    data: PreparedDataset, dataset: Path | str, batch_size: int, **padding: Any
) -> PairBatches:
    """The pairs of an open prepared `dataset` in file order, once, `batch_size` pairs a batch
    padded to the longest pair (`padding`: `pad_multiple` and the like): what both trainers'
    `evaluate_preference` score. A file without rejected answers is a ValueError that says so."""
    if not data.has_rejected:
        raise ValueError(
            f"{dataset}: no preference pairs (no rejected answers) to score preference "
            "accuracy on: prepare pairs (prompt, chosen, rejected; docs/data.md)"
        )
    return PairBatches(
        data,
        batch_size=batch_size,
        max_seq_length=int(PairView(data).lengths.max()),
        mode="pad",
        seed=0,
        shuffle=False,
        **padding,
    )


@dataclass(frozen=True)
class PairLayout:
    """Where each trained target of a batch of pairs belongs.

    `target_slots[t]` is `2 * slot + side` of target `t` (row-major over the batch's shifted
    targets; side 0 chosen, 1 rejected), `slots` the number of pair slots (rows x pairs a row
    holds at most), `present` the slots that hold a pair, `pair_ids` those pairs' dataset
    indices, and `chosen_tokens`/`rejected_tokens` their sides' target counts."""

    target_slots: np.ndarray
    slots: int
    present: np.ndarray
    pair_ids: np.ndarray
    chosen_tokens: np.ndarray
    rejected_tokens: np.ndarray

    @property
    def pairs(self) -> int:
        return len(self.present)


def pair_layout(batch: Batch) -> PairLayout:
    """The `PairLayout` of a batch of `PairBatches` (or a process' share of one)."""
    targets = shifted_targets(batch)
    segments = batch["segment_ids"][:, 1:]
    rows, columns = np.nonzero(targets != IGNORE_INDEX)
    per_row = batch["pair_ids"].shape[1]
    segment = segments[rows, columns] - 1
    slot_of = rows * per_row + segment // 2
    target_slots = (2 * slot_of + segment % 2).astype(np.int64)
    ids = batch["pair_ids"].reshape(-1)
    # An idle process' stand-in row (`ft_data.batches.process_share`) holds no pair.
    present = np.flatnonzero(ids >= 0) if "_no_tokens" not in batch else np.zeros(0, np.int64)
    counts = np.bincount(target_slots, minlength=2 * len(ids))
    return PairLayout(
        target_slots=target_slots,
        slots=len(ids),
        present=present,
        pair_ids=ids[present],
        chosen_tokens=counts[0::2][present],
        rejected_tokens=counts[1::2][present],
    )


def pair_count(batch: Batch) -> int:
    """The pairs of a batch: what a preference loss is averaged over (0 for an idle process'
    stand-in row)."""
    if "_no_tokens" in batch:
        return 0
    return int((batch["pair_ids"] >= 0).sum())


# -- metrics --------------------------------------------------------------------------------------


@dataclass
class PreferenceTotals:
    """The sums behind `PREFERENCE_METRICS`, added up over micro-batches (and processes)."""

    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])

    def add(self, chosen_rewards: np.ndarray, rejected_rewards: np.ndarray) -> None:
        chosen = np.asarray(chosen_rewards, dtype=np.float64)
        rejected = np.asarray(rejected_rewards, dtype=np.float64)
        self.sums[0] += float(chosen.sum())
        self.sums[1] += float(rejected.sum())
        self.sums[2] += float((chosen > rejected).sum())
        self.sums[3] += float(len(chosen))

    def take(self) -> list[float]:
        """The sums so far (reward of chosen, of rejected, pairs right, pairs), and start over."""
        sums, self.sums = self.sums, [0.0, 0.0, 0.0, 0.0]
        return sums


def preference_metrics(sums: list[float]) -> dict[str, float]:
    """`PREFERENCE_METRICS` from `PreferenceTotals.take()`'s sums (summed over processes)."""
    chosen, rejected, right, pairs = sums
    if not pairs:
        return dict.fromkeys(PREFERENCE_METRICS, float("nan"))
    return {
        "rewards_chosen": chosen / pairs,
        "rewards_rejected": rejected / pairs,
        "margin": (chosen - rejected) / pairs,
        "accuracy": right / pairs,
    }


# -- the stored reference of full fine-tuning ---------------------------------------------------

REFERENCE_FOLDER = "reference"


def reference_file(run_dir: Path, role: str) -> Path:
    """Where a full fine-tune's reference log-probabilities of its `role` (`training`,
    `validation`) pairs are stored."""
    return Path(run_dir) / REFERENCE_FOLDER / f"{role}.safetensors"


def compute_reference(
    batches: PairBatches, pairs: int, logps: Callable[[Batch], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's reference log-probabilities (chosen, rejected; float64, by dataset index),
    one pass over `batches` in order; `logps(batch)` gives the batch's present pairs' sums in
    `pair_layout` order."""
    chosen = np.full(pairs, np.nan)
    rejected = np.full(pairs, np.nan)
    for batch in batches.iter_from(0, epochs=1):
        layout = pair_layout(batch)
        chosen[layout.pair_ids], rejected[layout.pair_ids] = logps(batch)
    return chosen, rejected


def save_reference(path: Path, chosen: np.ndarray, rejected: np.ndarray, source: str) -> None:
    """Write the reference log-probabilities (safetensors, whole or absent: a temporary file
    renamed into place); `source` (the dataset's fingerprint) is kept in the metadata."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(
        {"chosen": np.asarray(chosen, np.float64), "rejected": np.asarray(rejected, np.float64)},
        str(partial),
        metadata={"source": source},
    )
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    partial.replace(path)


def load_reference(path: Path, pairs: int, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored reference at `path` when it is for `pairs` pairs of `source`, else None."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as handle:
        if (handle.metadata() or {}).get("source") != source:
            return None
        chosen, rejected = handle.get_tensor("chosen"), handle.get_tensor("rejected")
    if len(chosen) != pairs or len(rejected) != pairs:
        return None
    return chosen, rejected


def dataset_source(dataset: PreparedDataset) -> str:
    """What identifies a prepared dataset's content for the stored reference."""
    attrs = dataset.attrs
    return f"{attrs.get('cache_key') or attrs.get('source_hash') or dataset.path}:{len(dataset)}"
