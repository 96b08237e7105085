"""The train.yml ``data:`` section as ft-data's arguments.

``options_from_config(config.data, config_dir=...)`` is the one place where the names a user
writes in train.yml become the arguments of :func:`~ft_data.prepare.prepare_dataset`
(:class:`~ft_data.prepare.PrepareOptions`) and of :class:`~ft_data.batches.Batches`:

==================  ==============================================================
train.yml           ft-data
==================  ==============================================================
``format: auto``    ``PrepareOptions.format=None`` (detected, and the reason shown)
``columns``         ``format="columns"``, ``format_options={"columns": ...}``
``template: auto``  ``PrepareOptions.template=None`` (the tokenizer's own)
``template: x.j2``  the file, relative to train.yml
``system_prompt``   ``PrepareOptions.system_prompt``
``max_seq_length``  ``PrepareOptions.max_length`` and ``Batches(max_seq_length=)``
``overlong``        ``PrepareOptions.on_too_long`` (truncate, drop, error)
``train_on``        ``completions`` -> ``"assistant"``, ``all`` -> ``"all"``
``dedup``           ``PrepareOptions.dedup``: ``none``, ``exact`` or ``near``
``near_dup_threshold`` ``PrepareOptions.near_dup_threshold``
``label_column``    ``PrepareOptions.label_column`` (labels in the HDF5), ``Batches``
                    then pads (``packing`` is ignored), stratified splits
``packing``         ``Batches(mode="pack")``, else ``"pad"``
``text_documents``  ``PrepareOptions.text_documents`` (file, blank_line, line)
``text_overlap``    ``PrepareOptions.text_overlap``
``train`` ...       paths relative to train.yml made absolute; URLs and Hub ids
                    unchanged; a list of sources: a :class:`~ft_data.mixture.Mixture`
``mix_seed``        ``Mixture.seed``
==================  ==============================================================

``validation_split`` is carried through for the split (:meth:`DataSettings.split`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ft_config import DataConfig
from ft_data.batches import Batches, Mode
from ft_data.errors import DataError
from ft_data.formats import available_formats
from ft_data.hdf5 import PreparedDataset
from ft_data.mixture import MixSource, Mixture
from ft_data.prepare import PrepareOptions, check_options
from ft_data.split import ValidationPlan, plan_validation
from ft_data.templates import available_templates
from ft_data.tokenize import TrainOn

_TRAIN_ON: dict[str, TrainOn] = {"completions": "assistant", "all": "all"}


@dataclass(frozen=True)
class DataSettings:
    """What the ``data:`` section asks of ft-data, in ft-data's terms.

    ``train``, ``validation`` and ``test`` are sources for ``prepare_dataset`` (absolute paths,
    globs or URLs); ``prepare`` is the options for all three; ``max_seq_length`` and
    ``batch_mode`` are for :class:`Batches` (see :meth:`batches`).
    """

    train: str | Mixture  # a Mixture for data.train as a list of sources
    validation: str | None
    test: str | None
    prepare: PrepareOptions
    max_seq_length: int
    batch_mode: Mode
    validation_split: float
    dedup: Literal["none", "exact", "near"]
    near_dup_threshold: float
    label_column: str | None

    def batches(
        self, dataset: PreparedDataset, *, batch_size: int, seed: int, shuffle: bool = True
    ) -> Batches:
        """Batches over a dataset prepared with :attr:`prepare`, packed or padded as configured."""
        return Batches(
            dataset,
            batch_size=batch_size,
            max_seq_length=self.max_seq_length,
            mode=self.batch_mode,
            seed=seed,
            shuffle=shuffle,
        )

    def split(self, dataset: PreparedDataset, *, seed: int) -> ValidationPlan:
        """Which examples of a prepared training set to hold out for validation: none when a
        validation file is set, else ``validation_split`` of them, stratified by class when
        the dataset has labels."""
        labels = dataset.labels()
        return plan_validation(
            len(dataset),
            validation_file=self.validation,
            fraction=self.validation_split,
            seed=seed,
            labels=None if labels is None else labels.tolist(),
        )


def options_from_config(data: DataConfig, *, config_dir: str | Path) -> DataSettings:
    """The ``data:`` section of a train.yml in ``config_dir`` as :class:`DataSettings`.

    Raises :class:`DataError` (with the ``data.*`` key) for a format that does not exist, or
    for ``format: columns`` without ``columns``.
    """
    folder = Path(config_dir).expanduser().absolute()
    fmt: str | None = None if data.format == "auto" else data.format
    format_options: dict[str, object] = {}
    if data.columns and fmt in (None, "columns"):
        fmt, format_options = "columns", {"columns": dict(data.columns)}
    elif fmt == "columns":
        raise DataError(
            "format 'columns' needs the columns mapping",
            key="data.columns",
            hint="map your column names, e.g. columns: {prompt: question, response: answer}",
        )
    elif data.columns:
        raise DataError(
            f"columns is only used with format 'columns', and format is {fmt!r}",
            key="data.columns",
            hint="set format: columns, or remove columns",
        )
    if fmt is not None and fmt not in available_formats():
        raise DataError(
            f"unknown dataset format {fmt!r}",
            key="data.format",
            hint=f"formats: auto, {', '.join(available_formats())}",
        )
    options = PrepareOptions(
        format=fmt,
        format_options=format_options,
        template=_template(data.template, folder),
        max_length=data.max_seq_length,
        on_too_long=data.overlong,
        train_on=_TRAIN_ON[data.train_on],
        system_prompt=data.system_prompt or None,
        dedup=data.dedup,
        near_dup_threshold=data.near_dup_threshold,
        label_column=data.label_column,
        text_documents=data.text_documents,
        text_overlap=data.text_overlap,
    )
    check_options(options)  # text_overlap below max_seq_length
    return DataSettings(
        train=_train(data, folder),
        validation=_source(data.validation, folder) if data.validation else None,
        test=_source(data.test, folder) if data.test else None,
        prepare=options,
        max_seq_length=data.max_seq_length,
        batch_mode="pack" if data.packing and not data.label_column else "pad",
        validation_split=data.validation_split,
        dedup=data.dedup,
        near_dup_threshold=data.near_dup_threshold,
        label_column=data.label_column,
    )


def _train(data: DataConfig, folder: Path) -> str | Mixture:
    """``data.train``: one source, or a list of them as a :class:`Mixture` (a list of one
    plain source is that source)."""
    if isinstance(data.train, str):
        return _source(data.train, folder)
    sources = tuple(
        MixSource(
            path=_source(item.path, folder),
            weight=item.weight,
            rows=item.rows,
            ratio=item.ratio,
            config=item.config,
            split=item.split,
            revision=item.revision,
        )
        for item in data.train
    )
    return Mixture(sources, seed=data.mix_seed)


def _hub_id(value: str, folder: Path) -> bool:
    from ft_data.hub import looks_like_hub_id

    return looks_like_hub_id(value, folder)


def _template(value: str, folder: Path) -> str | None:
    """``auto`` -> the tokenizer's; a registered name stays a name; anything else is a file."""
    if value in ("auto", "tokenizer"):
        return None
    if value in available_templates():
        return value
    return _source(value, folder, data=False)


def _source(value: str, folder: Path, *, data: bool = True) -> str:
    """A path from train.yml made absolute against its folder; URLs and, for ``data``,
    Hugging Face dataset ids (``org/name`` naming nothing on disk) are returned unchanged."""
    if "://" in value or (data and _hub_id(value, folder)):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)
