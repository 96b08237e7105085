"""options_from_config: the train.yml `data:` section as prepare_dataset's and Batches'
arguments, and the prepare options it introduced (system_prompt, dedup), on the real data."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from ft_config import DataConfig, load_config
from ft_data import DataError, PreparedDataset, PrepareOptions, prepare_dataset
from ft_data.config import options_from_config
from ft_data.tokenizer import load_tokenizer


def test_defaults(tmp_path: Path) -> None:
    settings = options_from_config(DataConfig(), config_dir=tmp_path)
    assert settings.prepare == PrepareOptions(
        format=None,
        template=None,
        max_length=2048,
        on_too_long="truncate",
        train_on="assistant",
        system_prompt=None,
        dedup="exact",
    )
    assert (settings.train, settings.validation, settings.test) == (
        str(tmp_path / "data" / "train.jsonl"),
        None,
        None,
    )
    assert (settings.max_seq_length, settings.batch_mode) == (2048, "pack")
    assert (settings.validation_split, settings.dedup, settings.near_dup_threshold) == (
        0.05,
        "exact",
        0.85,
    )
    assert settings.label_column is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"overlong": "drop"}, {"on_too_long": "drop"}),
        ({"overlong": "error"}, {"on_too_long": "error"}),
        ({"train_on": "all"}, {"train_on": "all"}),
        ({"dedup": "none"}, {"dedup": "none"}),
        ({"dedup": "near"}, {"dedup": "near"}),
        ({"near_dup_threshold": 0.7}, {"near_dup_threshold": 0.7}),
        ({"label_column": "category"}, {"label_column": "category"}),
        ({"max_seq_length": 512}, {"max_length": 512}),
        ({"format": "sharegpt"}, {"format": "sharegpt"}),
        ({"template": "chatml"}, {"template": "chatml"}),
        ({"template": "auto"}, {"template": None}),
        ({"system_prompt": "Be brief."}, {"system_prompt": "Be brief."}),
        ({"system_prompt": ""}, {"system_prompt": None}),
        (
            {"columns": {"prompt": "q", "response": "a"}},
            {"format": "columns", "format_options": {"columns": {"prompt": "q", "response": "a"}}},
        ),
    ],
)
def test_each_setting(tmp_path: Path, changes: dict, expected: dict) -> None:
    settings = options_from_config(attrs.evolve(DataConfig(), **changes), config_dir=tmp_path)
    assert {key: getattr(settings.prepare, key) for key in expected} == expected


def test_paths_are_relative_to_train_yml(tmp_path: Path) -> None:
    data = DataConfig(
        train="data/*.jsonl",
        validation="/abs/valid.json",
        test="https://example.org/test.jsonl",
        template="templates/mine.jinja",
        packing=False,
        label_column="category",
    )
    settings = options_from_config(data, config_dir=tmp_path / "project")
    assert settings.train == str(tmp_path / "project" / "data" / "*.jsonl")
    assert settings.validation == "/abs/valid.json"
    assert settings.test == "https://example.org/test.jsonl"
    assert settings.prepare.template == str(tmp_path / "project" / "templates" / "mine.jinja")
    assert (settings.batch_mode, settings.label_column) == ("pad", "category")


def test_bad_format_settings(tmp_path: Path) -> None:
    cases = [
        (DataConfig(format="csvish"), "data.format", "unknown dataset format 'csvish'"),
        (DataConfig(format="columns"), "data.columns", "needs the columns mapping"),
        (
            DataConfig(format="alpaca", columns={"prompt": "q", "response": "a"}),
            "data.columns",
            "only used with format 'columns'",
        ),
    ]
    for data, key, what in cases:
        with pytest.raises(DataError) as caught:
            options_from_config(data, config_dir=tmp_path)
        assert caught.value.key == key and what in caught.value.what


def test_a_train_yml_end_to_end(datasets: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_bytes((datasets / "alpaca_en_demo.json").read_bytes())
    (tmp_path / "train.yml").write_text(
        "data:\n"
        "  train: data/train.json\n"
        "  system_prompt: Be brief.\n"
        "  max_seq_length: 512\n"
        "  overlong: drop\n",
        encoding="utf-8",
    )
    config = load_config(tmp_path / "train.yml")
    settings = options_from_config(config.data, config_dir=tmp_path)
    result = prepare_dataset(settings.train, tokenizer_dir, tmp_path / "out.h5", settings.prepare)
    report = result.report
    assert set(report.counts) == {"too_long", "duplicate"} and report.counts["duplicate"] == 14
    assert report.examples == 999 - report.left_out
    tokenizer = load_tokenizer(tokenizer_dir).tokenizer
    with PreparedDataset(result.path) as dataset:
        first = tokenizer.decode(dataset[0][0].tolist(), skip_special_tokens=False)
        assert first.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
        batch = next(settings.batches(dataset, batch_size=2, seed=0).iter_from(0))
        assert batch["input_ids"].shape == (2, 512)
        assert batch["segment_ids"].max() > 1  # packed: several examples in a row


def test_exact_dedup_names_every_repeat(
    datasets: Path, alpaca_rows: list[dict], tokenizer_dir: Path, tmp_path: Path
) -> None:
    seen: set[tuple[str, str, str]] = set()
    repeats = []
    for number, row in enumerate(alpaca_rows, 1):
        key = (row["instruction"], row["input"], row["output"])
        if key in seen:
            repeats.append(number)
        seen.add(key)
    source = datasets / "alpaca_en_demo.json"
    deduped = prepare_dataset(
        source, tokenizer_dir, tmp_path / "d.h5", PrepareOptions(max_length=None, dedup="exact")
    ).report
    assert deduped.counts == {"duplicate": len(repeats)} and len(repeats) == 14
    assert [issue.row for issue in deduped.issues] == repeats
    assert deduped.examples == len(seen) == 985
    kept = prepare_dataset(
        source, tokenizer_dir, tmp_path / "k.h5", PrepareOptions(max_length=None)
    ).report
    assert (kept.examples, kept.counts) == (999, {})
