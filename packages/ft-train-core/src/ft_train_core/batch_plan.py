"""How a run's data becomes batches: the numbers a trainer batches by (`BatchPlan`), the size
of a prepared dataset (`DatasetSize`), and the count of a run's optimizer steps, exactly as the
trainers' loops make it (`count_steps`). `ft_train_core.plan` decides the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ft_config import TrainConfig


@attrs.frozen
class BatchPlan:
    """How a trainer batches the data: plain numbers, saved with every checkpoint.

    `mode`: `pack` (examples packed into rows of `row_length` tokens), `pad` (one example a
    row) or `chunk` (a token stream cut into rows of `row_length`). `micro_batch`: rows per
    process per forward pass. `accumulation`: micro-batches per optimizer step.
    """

    mode: str
    row_length: int
    micro_batch: int
    accumulation: int

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPlan:
        return cls(
            mode=str(data["mode"]),
            row_length=int(data["row_length"]),
            micro_batch=int(data["micro_batch"]),
            accumulation=int(data["accumulation"]),
        )


@attrs.frozen(eq=False)
class DatasetSize:
    """What the plan needs of a prepared dataset: its examples' lengths and trained tokens."""

    lengths: np.ndarray
    trained_tokens: int
    mode: str

    @property
    def examples(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def longest(self) -> int:
        return int(self.lengths.max()) if len(self.lengths) else 0

    @classmethod
    def of(cls, path: Path, *, packing: bool = True) -> DatasetSize:
        """Read the prepared dataset at `path` (lengths from its offsets; trained tokens from
        its stats, or counted)."""
        from ft_data.hdf5 import PreparedDataset

        with PreparedDataset(path) as data:
            attrs_ = data.attrs
            stats = attrs_.get("stats") or {}
            trained = stats.get("trained_tokens")
            if trained is None:
                trained = int(sum(int(data[i][1].sum()) for i in range(len(data))))
            mode = batching_mode(attrs_, packing=packing)
            return cls(lengths=np.asarray(data.lengths), trained_tokens=int(trained), mode=mode)

    def subset(self, rows: np.ndarray) -> DatasetSize:
        """The size of `rows` of this dataset (the training share of a held-out split);
        trained tokens in proportion."""
        lengths = self.lengths[np.asarray(rows, dtype=np.int64)]
        share = float(lengths.sum()) / max(self.tokens, 1)
        return DatasetSize(lengths, round(self.trained_tokens * share), self.mode)


class _LengthsOnly:
    """What `ft_data.batches.Batches` reads of a dataset to plan its rows (no tokens): lets
    the plan count a run's steps exactly, as the trainers will, before any file is written."""

    def __init__(self, lengths: np.ndarray) -> None:
        self.lengths = np.asarray(lengths)
        self.num_tokens = int(self.lengths.sum())
        self.attrs: dict[str, Any] = {}
        self.path = Path("<plan>")

    def __len__(self) -> int:
        return len(self.lengths)

    def labels(self) -> None:
        return None


def count_steps(
    lengths: np.ndarray, batch: BatchPlan, settings: Any, *, processes: int = 1
) -> tuple[int, int | None]:
    """(optimizer steps, micro-batches) of a run over examples of `lengths` batched as
    `batch`: the count the trainers' loops make (`schedule.run_length` over ft-data's `Batches`)."""
    from ft_data.batches import Batches
    from ft_train_core.schedule import run_length

    batches = Batches(
        _LengthsOnly(lengths),  # type: ignore[arg-type]
        batch_size=batch.micro_batch * processes,
        max_seq_length=batch.row_length,
        mode=batch.mode,  # type: ignore[arg-type]
        seed=settings.seed,
    )
    return run_length(batches, settings, batch.accumulation)


def packs(config: TrainConfig) -> bool:
    """Whether the run packs examples into rows: `data.packing`, except for sequence
    classification (a class belongs to a whole row) and prefix/P-tuning (their virtual tokens
    take the 2D padding mask)."""
    return (
        config.data.packing
        and config.model.task == "causal-lm"
        and config.method.name not in ("prefix", "p-tuning")
    )


def saved_batch_plan(checkpoint: Path, config: TrainConfig) -> BatchPlan | None:
    """With `batch_size: auto`, the batches the run that wrote `checkpoint` chose: its
    `batch_plan`, or, for checkpoints from before plans, its `batch_size` with the config's
    row length and accumulation. None otherwise: a fixed batch size is the config's, which
    the resume check compares."""
    from ft_train_core.state import read_trainer_state

    if config.training.batch_size != "auto":
        return None

    try:
        state = read_trainer_state(checkpoint)
    except (OSError, ValueError):
        return None
    prints = state.get("fingerprint", {})
    if prints.get("batch_plan"):
        return BatchPlan.from_dict(prints["batch_plan"])
    rows = prints.get("batch_size") or state.get("batch_size")
    if not rows:
        return None
    return BatchPlan(
        mode="pack" if packs(config) else "pad",
        row_length=config.data.max_seq_length,
        micro_batch=int(rows),
        accumulation=config.training.gradient_accumulation_steps,
    )


def batching_mode(attributes: dict[str, Any], *, packing: bool) -> str:
    """`chunk` for raw text prepared without a length limit (continued pretraining), else
    `pack` or `pad` as `data.packing` says."""
    if attributes.get("format") == "text" and not attributes.get("max_length"):
        return "chunk"
    return "pack" if packing else "pad"


def fixed_batch_plan(config: TrainConfig, data_mode: str) -> BatchPlan:
    """The batches of a fixed `training.batch_size` (what the config says, no memory check)."""
    return BatchPlan(
        mode=data_mode,
        row_length=config.data.max_seq_length,
        micro_batch=int(config.training.batch_size),
        accumulation=config.training.gradient_accumulation_steps,
    )
