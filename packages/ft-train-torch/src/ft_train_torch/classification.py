"""What a sequence classifier is built with, read from its prepared dataset and model folder:
the names of its classes and the token that pads its rows."""

from __future__ import annotations

import json
from pathlib import Path

from ft_data.hdf5 import PreparedDataset


def label_names(dataset: PreparedDataset, path: Path, num_labels: int | None = None) -> list[str]:
    """The classes of a classification dataset; a clear error when it has none.

    `num_labels` (`model.num_labels`) asks for that many outputs: more than the data has adds
    classes named `LABEL_<n>` (classes the training rows lack but the model must be able to
    give); fewer is an error naming the classes found."""
    names = dataset.label_names
    if dataset.labels() is None or not names:
        raise ValueError(
            f"{path}: model.task: sequence-classification needs a class per example, and this "
            "prepared dataset has no labels: set data.label_column to the column that holds "
            "each row's class (the data is then prepared again)"
        )
    if len(names) < 2:
        raise ValueError(
            f"{path}: sequence classification needs at least two classes; the label column "
            f"holds only {names!r}"
        )
    names = list(names)
    if num_labels is not None:
        if num_labels < len(names):
            raise ValueError(
                f"model.num_labels is {num_labels}, but {path} has {len(names)} classes "
                f"({', '.join(names)}): raise model.num_labels or leave it unset (counted from "
                "the data)"
            )
        names += [f"LABEL_{i}" for i in range(len(names), num_labels)]
    return names


def pad_token_id(model_path: Path, dataset: PreparedDataset) -> int:
    """The token that pads classification rows, which the model must know too: a causal LM's
    classifier reads the last token that is not padding. The model's own pad token, else the
    tokenizer's (as prepared), else eos, else 0."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    text = config.get("text_config") or {}
    attrs = dataset.attrs
    for candidate in (
        config.get("pad_token_id"),
        text.get("pad_token_id"),
        attrs.get("pad_token_id"),
        config.get("eos_token_id"),
        attrs.get("eos_token_id"),
    ):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if isinstance(candidate, int) and candidate >= 0:
            return candidate
    return 0
