"""A run's data: its training file prepared (or reused from the cache) for its model, the
validation split held out into the run folder, and the prepared files recorded in the job
store."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from ft_config import TrainConfig, redact_url
from ft_runs.store import JobStore

Say = Callable[[str], None]


@attrs.frozen
class PreparedData:
    train: Path
    validation: Path | None
    summary: dict[str, Any]
    split: tuple[float, int] | None = None
    """(validation_split, seed) still to hold out of `train`, or None."""


def prepare(
    config: TrainConfig,
    config_path: Path | None,
    model_path: Path,
    say: Say,
    *,
    progress: Callable[[str, int], None] | None = None,
    url_token: str | None = None,
) -> PreparedData:
    """Prepare (or reuse from the cache) the training and validation data for this model.

    The validation set is the `data.validation` file when set; otherwise `validation_split`
    of the prepared training examples, held out with a seeded split (stratified by label when
    the dataset has labels). Held-out splits are written by :func:`materialize_split` into the
    run folder, so a run keeps exactly the data it trained on.

    `url_token` (passwords.yml's `data_token`) authenticates http(s) data URLs; the summary
    records every URL with its credentials masked.
    """
    from ft_data.cache import prepare_cached
    from ft_data.config import options_from_config

    settings = options_from_config(
        config.data, config_dir=Path(config_path).resolve().parent if config_path else Path.cwd()
    )

    def one(source: str, role: str) -> Any:
        tick = (lambda rows: progress(role, rows)) if progress else None
        result = prepare_cached(
            source, model_path, settings.prepare, progress=tick, url_token=url_token
        )
        state = "reused" if result.reused else "prepared"
        say(f"{role} data: {state} {result.path.name}: {result.report.summary()}")
        return result

    train = one(settings.train, "training")
    _check_pairs(config, train, settings.train, "data.train")
    summary: dict[str, Any] = {
        "train_source": redact_url(str(settings.train)),
        "train_cache_key": result_key(train.path),
        "format": train.report.format,
        "format_reason": train.report.format_reason,
        "template": train.report.template,
        "examples": train.report.examples,
        "tokens": train.report.tokens,
        "trained_tokens": train.report.trained_tokens,
        "left_out": dict(train.report.counts),
        "seed": config.training.seed,
    }
    if settings.validation:
        validation = one(settings.validation, "validation")
        _check_pairs(config, validation, settings.validation, "data.validation")
        summary.update(
            validation_source=redact_url(settings.validation),
            validation_cache_key=result_key(validation.path),
            validation_examples=validation.report.examples,
        )
        return PreparedData(train.path, validation.path, summary, split=None)
    fraction = settings.validation_split
    summary["validation_split"] = fraction
    if fraction <= 0:
        say("validation: off (validation_split is 0 and no validation file)")
        return PreparedData(train.path, None, summary, split=None)
    return PreparedData(train.path, None, summary, split=(fraction, config.training.seed))


def _check_pairs(config: TrainConfig, result: Any, source: str, key: str) -> None:
    """`method.objective: dpo | orpo` trains on preference pairs: refuse other data before
    any model is loaded, naming the file and what to do."""
    from ft_data.hdf5 import PreparedDataset

    objective = config.method.objective
    if objective == "sft":
        return
    with PreparedDataset(result.path) as prepared:
        if prepared.has_rejected:
            return
    raise ValueError(
        f"method.objective: {objective} trains on preference pairs, and {key} "
        f"({redact_url(str(source))}) has none: it was read as {result.report.format} data "
        f"({result.report.kind}). Give rows with a prompt, a chosen and a rejected answer "
        "(`prompt`/`chosen`/`rejected`, sharegpt_preference or openai_preference: "
        "docs/preference.md), or set method.objective: sft"
    )


def without_url_credentials(config: TrainConfig) -> TrainConfig:
    """`config` with the credentials of its data URLs masked (`ft_config.redact_url`): what a
    run records (config snapshot, run.json, the store, checkpoints) once the data is read."""
    data = config.data
    masked = {}
    for name in ("train", "validation", "test"):
        value = getattr(data, name, None)
        if isinstance(value, str) and redact_url(value) != value:
            masked[name] = redact_url(value)
    return attrs.evolve(config, data=attrs.evolve(data, **masked)) if masked else config


def result_key(path: Path) -> str | None:
    from ft_data.hdf5 import read_attrs

    attrs = read_attrs(path) or {}
    return attrs.get("cache_key")


def materialize_split(data: PreparedData, folder: Path, say: Say) -> PreparedData:
    """Write the held-out split of `data` as `folder/train.h5` and `folder/validation.h5`
    (reused when both exist: a resumed run keeps its split)."""
    if data.split is None:
        return data
    from ft_data.hdf5 import PreparedDataset, PreparedWriter
    from ft_data.split import split_rows

    train_file, validation_file = folder / "train.h5", folder / "validation.h5"
    fraction, seed = data.split
    if not (train_file.exists() and validation_file.exists()):
        with PreparedDataset(data.train) as source:
            labels = source.labels()
            train_rows, held_out = split_rows(
                len(source),
                fraction=fraction,
                seed=seed,
                labels=None if labels is None else list(labels),
            )
            if len(held_out) == 0:
                say(f"validation: off ({len(source)} example(s) are too few to hold any out)")
                return PreparedData(data.train, None, data.summary, split=None)
            attrs = source.attrs
            parent = str(attrs.get("cache_key", ""))
            for role, path, rows in (
                ("train", train_file, train_rows),
                ("validation", validation_file, held_out),
            ):
                key = hashlib.sha256(f"{parent}:{role}:{fraction}:{seed}".encode()).hexdigest()
                subset = {**attrs, "cache_key": key, "subset_of": parent, "subset": role}
                names = source.label_names
                with PreparedWriter(path, subset, label_names=names) as w:
                    pairs = source.has_rejected
                    for row in rows:
                        tokens, mask = source[int(row)]
                        label = None if labels is None else names[int(labels[int(row)])]
                        # Preference pairs keep their rejected side (DPO, ORPO train on both).
                        rejected = source.rejected(int(row)) if pairs else None
                        w.add(tokens, mask, label=label, rejected=rejected)
                    if labels is not None:
                        w.finish_labels()
        say(
            f"validation: {len(held_out)} of {len(held_out) + len(train_rows)} examples held out "
            f"(validation_split {fraction}, seed {seed})"
        )
    summary = {
        **data.summary,
        "train_file": str(train_file),
        "validation_file": str(validation_file),
    }
    return PreparedData(train_file, validation_file, summary, split=None)


def record_datasets(store: JobStore, data: PreparedData) -> None:
    for role in ("train", "validation"):
        key = data.summary.get(f"{role}_cache_key")
        path = data.train if role == "train" else data.validation
        if key and path:
            store.record_dataset(
                key,
                path=path,
                source=data.summary.get(f"{role}_source", ""),
                format=data.summary.get("format"),
                rows=data.summary.get("examples" if role == "train" else "validation_examples"),
                tokens=data.summary.get("tokens") if role == "train" else None,
            )
