"""Mixtures: data.train as a list of sources, each with a weight, a row count or a ratio,
seeded; the mix in the stated proportions, and the report per source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ft_config import DataConfig, DataSource
from ft_data import Batches, DataError, PreparedDataset, PrepareOptions, prepare_dataset
from ft_data.config import options_from_config
from ft_data.mixture import MixSource, Mixture, plan_mixture
from ft_data.tokenizer import ModelTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def three(alpaca_rows: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sources of distinct rows in three formats: 999 Alpaca rows, and 500 of them
    as ShareGPT and 500 as OpenAI chats with a marker word in each question."""
    folder = tmp_path_factory.mktemp("three")
    (folder / "alpaca.json").write_text(json.dumps(alpaca_rows), encoding="utf-8")
    with open(folder / "sharegpt.jsonl", "w", encoding="utf-8") as out:
        for row in alpaca_rows[:500]:
            turns = [
                {"from": "human", "value": "Shared: " + row["instruction"]},
                {"from": "gpt", "value": row["output"]},
            ]
            out.write(json.dumps({"conversations": turns}) + "\n")
    with open(folder / "openai.jsonl", "w", encoding="utf-8") as out:
        for row in alpaca_rows[499:]:
            messages = [
                {"role": "user", "content": "Asked: " + row["instruction"]},
                {"role": "assistant", "content": row["output"]},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    return folder


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> ModelTokenizer:
    return load_tokenizer(tokenizer_dir)


def _origin(dataset: PreparedDataset, parts: list[Path]) -> list[int]:
    """For each example of the mix, the source (0, 1, 2) it came from, by its tokens."""
    where: dict[bytes, int] = {}
    for index, part in enumerate(parts):
        with PreparedDataset(part) as data:
            for i in range(len(data)):
                where[data[i][0].tobytes()] = index
    return [where[dataset[i][0].tobytes()] for i in range(len(dataset))]


def test_three_weighted_sources_in_the_stated_proportions(
    three: Path, tok: ModelTokenizer, tmp_path: Path
) -> None:
    settings = options_from_config(
        DataConfig(
            train=[
                DataSource(path="alpaca.json", weight=5),
                DataSource(path="sharegpt.jsonl", weight=3),
                DataSource(path="openai.jsonl", weight=2),
            ],
            max_seq_length=4096,
            dedup="none",
            mix_seed=7,
        ),
        config_dir=three,
    )
    mixture = settings.train
    assert isinstance(mixture, Mixture) and mixture.seed == 7
    result = prepare_dataset(mixture, tok, tmp_path / "mix.h5", settings.prepare)
    report = result.report
    # 999, 500 and 500 available: ShareGPT runs out first, 500 / 0.3 = 1,666 in all.
    assert [s["available"] for s in report.sources] == [999, 500, 500]
    assert [s["taken"] for s in report.sources] == [833, 500, 333]
    assert [s["share"] for s in report.sources] == [0.5, 0.3001, 0.1999]
    assert report.examples == 1666 and report.format == "mixture"
    assert report.sources[0]["detected"].startswith("detected: alpaca")
    assert report.sources[1]["detected"].startswith("detected: sharegpt")
    parts = [Path(s["prepared"]) for s in report.sources]
    with PreparedDataset(result.path) as mix:
        origin = _origin(mix, parts)
        assert np.bincount(origin).tolist() == [833, 500, 333]
        # What training sees: the first 300 examples of an epoch's shuffled order are in the
        # stated proportions within sampling error (3 standard deviations of a binomial).
        batches = Batches(mix, batch_size=1, max_seq_length=4096, mode="pad", seed=3)
        order = [int(i) for i in batches.order(0)[:300]]
        counts = np.bincount([origin[i] for i in order], minlength=3)
        for count, share in zip(counts, (0.5, 0.3, 0.2), strict=True):
            assert abs(count - 300 * share) <= 3 * np.sqrt(300 * share * (1 - share))
    # Seeded: the same mix again is the same file's key; another seed picks other rows.
    again = prepare_dataset(mixture, tok, tmp_path / "mix.h5", settings.prepare)
    assert again.reused
    other = Mixture(mixture.sources, seed=8)
    assert plan_mixture([999, 500, 501], other.sources, 8)[0].tolist() != (
        plan_mixture([999, 500, 501], mixture.sources, 7)[0].tolist()
    )


def test_rows_and_ratio(three: Path, tok: ModelTokenizer, tmp_path: Path) -> None:
    mixture = Mixture(
        (
            MixSource(str(three / "alpaca.json"), rows=100),
            MixSource(str(three / "sharegpt.jsonl"), ratio=2),
            MixSource(str(three / "openai.jsonl")),
        )
    )
    result = prepare_dataset(mixture, tok, tmp_path / "m.h5", PrepareOptions(max_length=None))
    taken = [(s["taken"], s["distinct"]) for s in result.report.sources]
    assert taken == [(100, 100), (1000, 500), (500, 500)]
    plan = plan_mixture([10], (MixSource("x", rows=25),), 0)[0]
    assert sorted(np.bincount(plan).tolist()) == [2] * 5 + [3] * 5  # each twice, 5 again


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            MixSource("a", weight=1, rows=3),
            "a: give one of weight, rows and ratio, not weight and rows",
        ),
        (MixSource("a", ratio=0), "ratio must be more than 0, got 0"),
        (MixSource("a", rows=0), "rows must be at least 1, got 0"),
    ],
)
def test_bad_mixtures_are_named(source: MixSource, message: str) -> None:
    with pytest.raises(DataError) as raised:
        Mixture((source,))
    assert raised.value.what == message and raised.value.key.startswith("data.train[0]")


def test_mixing_kinds_is_refused(
    three: Path, datasets: Path, tok: ModelTokenizer, tmp_path: Path
) -> None:
    mixture = Mixture(
        (MixSource(str(three / "openai.jsonl")), MixSource(str(datasets / "c4_demo.jsonl")))
    )
    with pytest.raises(
        DataError, match="the sources of a mixture must be of one kind, found chat, text"
    ):
        prepare_dataset(mixture, tok, tmp_path / "k.h5", PrepareOptions(max_length=None))
