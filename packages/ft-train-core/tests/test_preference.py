"""The batch layout of preference pairs (`ft_train_core.preference`): a pair's chosen and
rejected sides as two examples of one row, `pair_ids`, and where each target's
log-probability adds up; the metrics; the stored reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ft_data.hdf5 import PreparedDataset, PreparedWriter
from ft_train_core.preference import (
    PairBatches,
    PreferenceTotals,
    load_reference,
    pair_count,
    pair_layout,
    preference_metrics,
    save_reference,
)

# (prompt, chosen answer, rejected answer) token ids
PAIRS = [
    ([5, 6], [7, 8, 9], [10]),
    ([11], [12], [13, 14]),
    ([15, 16, 17], [18, 19], [20, 21, 22]),
]


@pytest.fixture
def pairs(tmp_path: Path) -> PreparedDataset:
    with PreparedWriter(tmp_path / "pairs.h5", {"pad_token_id": 0}) as writer:
        for prompt, chosen, rejected in PAIRS:
            sides = [
                (np.array(prompt + answer), np.array([0] * len(prompt) + [1] * len(answer)))
                for answer in (chosen, rejected)
            ]
            writer.add(*sides[0], rejected=sides[1])
    with PreparedDataset(tmp_path / "pairs.h5") as data:
        yield data


def test_a_pair_is_one_row_of_two_examples(pairs: PreparedDataset) -> None:
    batch = PairBatches(pairs, batch_size=2, max_seq_length=16, shuffle=False).batch(0)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 8, 9, 5, 6, 10],
        [11, 12, 11, 13, 14, 0, 0, 0],
    ]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 2, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 1, 2, 0, 0, 0]]
    assert batch["pair_ids"].tolist() == [[0], [1]]
    layout = pair_layout(batch)
    # row 0: chosen targets 7, 8, 9 (slot 0, side 0), rejected 10 (slot 0, side 1); row 1:
    # chosen 12 (slot 1), rejected 13, 14
    assert layout.target_slots.tolist() == [0, 0, 0, 1, 2, 3, 3]
    assert layout.present.tolist() == [0, 1] and layout.pair_ids.tolist() == [0, 1]
    assert layout.chosen_tokens.tolist() == [3, 1]
    assert layout.rejected_tokens.tolist() == [1, 2]
    assert pair_count(batch) == 2


def test_packed_pairs_keep_their_order_and_slots(pairs: PreparedDataset) -> None:
    batches = PairBatches(pairs, batch_size=1, max_seq_length=32, mode="pack", shuffle=False)
    batch = batches.batch(0)
    assert batch["pair_ids"].tolist() == [[0, 1, 2]]
    assert batch["segment_ids"].max() == 6
    layout = pair_layout(batch)
    assert layout.chosen_tokens.tolist() == [3, 1, 2]
    assert layout.rejected_tokens.tolist() == [1, 2, 3]
    # the third pair's rejected targets (slot 2, side 1) come last
    assert layout.target_slots[-3:].tolist() == [5, 5, 5]


def test_a_row_must_hold_both_sides(pairs: PreparedDataset) -> None:
    with pytest.raises(ValueError, match="more than max_seq_length 8"):
        PairBatches(pairs, batch_size=1, max_seq_length=8)


def test_metrics() -> None:
    totals = PreferenceTotals()
    totals.add(np.array([0.5, -0.1]), np.array([0.1, 0.2]))
    totals.add(np.array([0.3]), np.array([-0.3]))
    metrics = preference_metrics(totals.take())
    assert metrics == pytest.approx(
        {"rewards_chosen": 0.7 / 3, "rewards_rejected": 0.0, "margin": 0.7 / 3, "accuracy": 2 / 3}
    )
    assert totals.take() == [0.0, 0.0, 0.0, 0.0]


def test_the_stored_reference_is_for_its_data(tmp_path: Path) -> None:
    path = tmp_path / "reference" / "training.safetensors"
    save_reference(path, np.array([-1.0, -2.0]), np.array([-3.0, -4.0]), source="data-a:2")
    chosen, rejected = load_reference(path, 2, "data-a:2")
    assert chosen.tolist() == [-1.0, -2.0] and rejected.tolist() == [-3.0, -4.0]
    assert load_reference(path, 2, "data-b:2") is None
    assert load_reference(path, 3, "data-a:2") is None
    assert [p.name for p in path.parent.iterdir()] == ["training.safetensors"]
