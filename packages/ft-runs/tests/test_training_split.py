"""The validation rows `ft train` holds out of the training data (ft_runs.training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ft_data.hdf5 import PreparedDataset, PreparedWriter
from ft_runs.run_data import PreparedData, materialize_split


def labelled(path: Path) -> Path:
    classes = ["neg"] * 10 + ["pos"] * 9 + ["rare"]
    with PreparedWriter(path, {"cache_key": "k" * 64}) as w:
        for i, label in enumerate(classes):
            w.add(np.array([1, 2, 3 + i]), np.array([0, 1, 1]), label=label)
        w.finish_labels()
    return path


def test_split_is_stratified_and_keeps_labels_and_their_numbering(tmp_path: Path) -> None:
    source = labelled(tmp_path / "all.h5")
    said: list[str] = []
    data = materialize_split(
        PreparedData(source, None, {}, split=(0.2, 7)), tmp_path / "run" / "data", said.append
    )
    assert data.train == tmp_path / "run" / "data" / "train.h5"
    assert said == ["validation: 4 of 20 examples held out (validation_split 0.2, seed 7)"]
    assert data.validation is not None
    with (
        PreparedDataset(source) as full,
        PreparedDataset(data.train) as train,
        PreparedDataset(data.validation) as val,
    ):
        names = full.label_names
        assert names == ["neg", "pos", "rare"]
        assert train.label_names == names and val.label_names == names
        val_classes = [names[i] for i in val.labels()]
        train_classes = [names[i] for i in train.labels()]
        # 20% of 10 neg and 9 pos: 2 each; the single "rare" row stays in training.
        assert sorted(val_classes) == ["neg", "neg", "pos", "pos"]
        assert train_classes.count("rare") == 1
        # Every example kept its own label: the third token identifies the source row.
        by_token = {int(full[i][0][2]): names[full.labels()[i]] for i in range(len(full))}
        for part in (train, val):
            for i in range(len(part)):
                assert names[part.labels()[i]] == by_token[int(part[i][0][2])]
        # Held-out parts are new datasets: their own cache keys, naming their source.
        assert train.attrs["subset_of"] == val.attrs["subset_of"] == "k" * 64
        assert train.attrs["cache_key"] != val.attrs["cache_key"]
    # A resumed run reuses the split it made.
    again = materialize_split(
        PreparedData(source, None, {}, split=(0.2, 7)), data.train.parent, said.append
    )
    assert again.validation == data.validation and len(said) == 1
