"""Train/validation splits: rows held out of the training data (seeded, stratified when the
rows have labels), or a separate validation file used as it is.

The order rows are drawn in comes from a 64-bit mix of ``(seed, row index)``, not from
numpy's random generators, so a split depends on ``(n, fraction, seed, labels)`` only: the
same on every machine and numpy version.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ft_data.ngrams import splitmix64


def split_rows(
    n: int,
    *,
    fraction: float,
    seed: int,
    labels: Sequence[Hashable] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows ``0 .. n-1`` into ``(train_indices, validation_indices)``: sorted int64
    arrays that are disjoint and together hold every row.

    The validation set has ``round(n * fraction)`` rows (Python's ``round``: halves go to the
    even number), but at least 1 when ``fraction > 0`` and ``n >= 2``, and at most ``n - 1``:
    a training row always remains. With ``labels`` (one per row; None is a label too) the
    split is stratified: each class gives ``n_class * fraction`` rows rounded down or up (so
    within one row), the classes with the largest remainders rounding up until the total is
    reached; a class never gives all its rows, so a class of one row stays in training. When
    the classes cannot give the total that way, the validation set is smaller.
    Raises ValueError for a fraction outside [0, 1) or labels of the wrong length.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    if n < 0:
        raise ValueError(f"the number of rows must be >= 0, got {n}")
    target = round(n * fraction)
    if fraction > 0 and n >= 2:
        target = max(target, 1)
    target = min(target, max(n - 1, 0))
    keys = _keys(np.arange(n), seed)
    if labels is None:
        chosen = np.argsort(keys, kind="stable")[:target]
    else:
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} rows")
        chosen = _stratified(labels, keys, fraction, target, seed)
    validation = np.zeros(n, dtype=bool)
    validation[chosen] = True
    return np.flatnonzero(~validation), np.flatnonzero(validation)


def _stratified(
    labels: Sequence[Hashable], keys: np.ndarray, fraction: float, target: int, seed: int
) -> np.ndarray:
    classes: dict[Hashable, list[int]] = {}
    for row, label in enumerate(labels):
        classes.setdefault(label, []).append(row)
    members = [np.asarray(rows, dtype=np.int64) for rows in classes.values()]
    sizes = np.array([len(rows) for rows in members], dtype=np.int64)
    exact = sizes * fraction
    quota = np.minimum(np.floor(exact).astype(np.int64), sizes - 1)
    # Round up the classes with the largest remainders (ties in a seeded order of classes)
    # until the total is reached, never taking a class's last row.
    order = np.lexsort((_keys(np.arange(len(members)), seed + 1), -(exact - quota)))
    missing = target - int(quota.sum())
    for index in order:
        if missing <= 0:
            break
        if quota[index] + 1 <= sizes[index] - 1:
            quota[index] += 1
            missing -= 1
    chosen = [
        rows[np.argsort(keys[rows], kind="stable")[:take]]
        for rows, take in zip(members, quota, strict=True)
    ]
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def _keys(rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random 64-bit key per row: sorting by it shuffles the rows."""
    salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return splitmix64(rows.astype(np.uint64) ^ salt)


@dataclass(frozen=True)
class ValidationPlan:
    """Where validation rows come from: ``validation`` indexes held-out training rows (empty
    when validation is off or comes from a file); ``validation_file`` is that file, if any."""

    train: np.ndarray
    validation: np.ndarray
    validation_file: str | None = None


def plan_validation(
    rows: int,
    *,
    validation_file: str | Path | None,
    fraction: float,
    seed: int,
    labels: Sequence[Hashable] | None = None,
) -> ValidationPlan:
    """What a training run validates on, as train.yml's ``data`` section says: the
    ``validation`` file when it is set (every training row is then trained on), otherwise
    ``validation_split`` of the training rows, held out with :func:`split_rows`."""
    if validation_file is not None:
        return ValidationPlan(
            np.arange(rows, dtype=np.int64), np.zeros(0, dtype=np.int64), str(validation_file)
        )
    train, held_out = split_rows(rows, fraction=fraction, seed=seed, labels=labels)
    return ValidationPlan(train, held_out)
