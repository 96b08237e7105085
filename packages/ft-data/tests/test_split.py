"""Seeded train/validation splits: exact sizes, determinism, stratification, validation files."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ft_data.split import plan_validation, split_rows


def _check_partition(n: int, train: np.ndarray, validation: np.ndarray) -> None:
    assert train.dtype == validation.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(validation) > 0)
    assert sorted([*train.tolist(), *validation.tolist()]) == list(range(n))


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [
        (999, 0.05, 50),  # round(49.95)
        (1000, 0.1, 100),
        (10, 0.25, 2),  # round(2.5) == 2: halves go to the even number
        (10, 0.35, 4),  # round(3.5) == 4
        (20, 0.01, 1),  # round(0.2) == 0, but one validation row at least
        (2, 0.5, 1),
        (2, 0.9, 1),  # round(1.8) == 2, but one training row always remains
        (1, 0.5, 0),
        (0, 0.5, 0),
        (100, 0.0, 0),
    ],
)
def test_sizes_are_exact(n: int, fraction: float, expected: int) -> None:
    train, validation = split_rows(n, fraction=fraction, seed=0)
    assert len(validation) == expected
    _check_partition(n, train, validation)


def test_same_seed_same_split_other_seed_other_split() -> None:
    first = split_rows(999, fraction=0.1, seed=42)
    again = split_rows(999, fraction=0.1, seed=42)
    other = split_rows(999, fraction=0.1, seed=43)
    assert first[1].tolist() == again[1].tolist() and first[0].tolist() == again[0].tolist()
    assert first[1].tolist() != other[1].tolist()
    assert len(set(first[1].tolist()) & set(other[1].tolist())) < 30  # ~10 expected by chance
    # Fixed values: the split does not depend on numpy's random generators or the machine.
    assert split_rows(10, fraction=0.2, seed=0)[1].tolist() == [1, 4]
    assert split_rows(10, fraction=0.2, seed=1)[1].tolist() == [6, 8]


def test_stratified_split_keeps_each_class_share(alpaca_rows: list[dict[str, str]]) -> None:
    # Real labels: the first word of each Alpaca instruction ("Generate", "Describe", ...):
    # a few big classes, many small ones, and single rows.
    labels = [row["instruction"].split()[0].strip(".,:").lower() for row in alpaca_rows]
    counts = Counter(labels)
    assert sum(1 for c in counts.values() if c == 1) > 50
    for seed in (0, 1):
        train, validation = split_rows(999, fraction=0.2, seed=seed, labels=labels)
        _check_partition(999, train, validation)
        held = Counter(labels[i] for i in validation)
        for label, count in counts.items():
            if count == 1:
                assert held[label] == 0  # a class of one row stays in training
            else:
                assert abs(held[label] - count * 0.2) < 1  # its share, within one row
                assert held[label] < count
        # The singletons give no rows, so more of the other classes round up: 200 in all.
        assert len(validation) == round(999 * 0.2)
    # Where the classes cannot make up the total within one row each, fewer rows are held out.
    labels = [*"abcdefgh", "z", "z"]
    assert split_rows(10, fraction=0.3, seed=0, labels=labels)[1].tolist() in ([8], [9])


def test_stratified_split_hits_the_total_and_is_seeded() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 19 + ["d"]
    train, validation = split_rows(100, fraction=0.1, seed=3, labels=labels)
    assert len(validation) == 10
    assert Counter(labels[i] for i in validation) == {"a": 5, "b": 3, "c": 2}
    _check_partition(100, train, validation)
    other = split_rows(100, fraction=0.1, seed=4, labels=labels)[1]
    assert validation.tolist() != other.tolist()
    assert split_rows(100, fraction=0.1, seed=3, labels=labels)[1].tolist() == validation.tolist()
    # Two classes of 3 at 25%: 0.75 each, 2 rows in all (round(1.5) == 2): one from each.
    labels = ["x", "y", "x", "y", "x", "y"] + [None] * 2
    _, held = split_rows(8, fraction=0.25, seed=0, labels=labels)
    assert sorted(Counter(labels[i] for i in held).values()) == [1, 1]


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_rows(10, fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="labels"):
        split_rows(10, fraction=0.1, seed=0, labels=["a"] * 9)


def test_plan_validation_uses_the_file_or_holds_rows_out() -> None:
    plan = plan_validation(100, validation_file="data/valid.jsonl", fraction=0.05, seed=0)
    assert plan.validation_file == "data/valid.jsonl"
    assert plan.train.tolist() == list(range(100)) and len(plan.validation) == 0
    plan = plan_validation(100, validation_file=None, fraction=0.05, seed=0)
    assert plan.validation_file is None
    assert plan.validation.tolist() == split_rows(100, fraction=0.05, seed=0)[1].tolist()
    assert len(plan.train) == 95
    off = plan_validation(100, validation_file=None, fraction=0.0, seed=0)
    assert (len(off.train), len(off.validation)) == (100, 0)
