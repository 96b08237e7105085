"""Hugging Face Hub datasets as data.train: fetched through huggingface_hub (against ft-testing's
local Hub server, HF_ENDPOINT) into its cache, read with ft's own readers, by config and split,
with the token of passwords.yml for a gated set, and again offline."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from ft_config import DataConfig, DataSource
from ft_config.secrets import write_passwords_file
from ft_data import DataError, PrepareOptions, prepare_dataset
from ft_data.config import options_from_config
from ft_data.hub import HubDataset, looks_like_hub_id, select_files
from ft_data.tokenizer import ModelTokenizer, load_tokenizer
from ft_testing.hf_client import use_hf_endpoint, use_hf_home
from ft_testing.hub_server import LocalHub

TOKEN = "hf_gated_data_token"
README = """---
configs:
- config_name: alpaca
  default: true
  data_files:
  - split: train
    path: alpaca/train-*.parquet
- config_name: chat
  data_files:
  - split: train
    path: chat/*.jsonl
---
# Two configs
"""


def _parquet(rows: list[dict[str, str]]) -> bytes:
    buffer = io.BytesIO()
    pl.DataFrame(rows).write_parquet(buffer)
    return buffer.getvalue()


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def hub(
    alpaca_rows: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[LocalHub]:
    """A local Hub with three dataset repos: one by the Hub's file naming conventions
    (train and test Parquet shards), one whose README declares two configs, and a gated one."""
    server = LocalHub()
    server.add_repo(
        "ft-test/alpaca-mini",
        {
            "README.md": b"# Alpaca, a few rows\n",
            "data/train-00000-of-00002.parquet": _parquet(alpaca_rows[:60]),
            "data/train-00001-of-00002.parquet": _parquet(alpaca_rows[60:100]),
            "data/test-00000-of-00001.parquet": _parquet(alpaca_rows[100:120]),
        },
        repo_type="dataset",
    )
    chats = [
        {
            "conversations": [
                {"from": "human", "value": r["instruction"]},
                {"from": "gpt", "value": r["output"]},
            ]
        }
        for r in alpaca_rows[200:230]
    ]
    server.add_repo(
        "ft-test/two-configs",
        {
            "README.md": README.encode(),
            "alpaca/train-00000-of-00001.parquet": _parquet(alpaca_rows[:10]),
            "chat/part-0.jsonl": _jsonl(chats),
        },
        repo_type="dataset",
    )
    server.add_repo(
        "ft-test/gated-mini",
        {"train.jsonl": _jsonl(alpaca_rows[:5])},
        repo_type="dataset",
        gated=True,
        token=TOKEN,
    )
    with server:
        use_hf_endpoint(monkeypatch, server.url)
        use_hf_home(monkeypatch, tmp_path / "hf_home")
        monkeypatch.chdir(tmp_path)
        yield server


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> ModelTokenizer:
    return load_tokenizer(tokenizer_dir)


def test_a_hub_dataset_prepares_online_then_offline(
    hub: LocalHub, tok: ModelTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = PrepareOptions(max_length=None)
    for name in ("ft-test/alpaca-mini", "hf://datasets/ft-test/alpaca-mini"):
        result = prepare_dataset(name, tok, tmp_path / "online.h5", options, rebuild=True)
        assert (
            result.report.format_reason
            == "detected: alpaca (keys 'instruction'/'output' in 100/100 rows)"
        )
        assert result.report.examples == 100
    test = HubDataset.parse("ft-test/alpaca-mini", split="test")
    assert prepare_dataset(test, tok, tmp_path / "test.h5", options).report.examples == 20
    # Offline (and the server gone): the cached files prepare the same.
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = prepare_dataset("ft-test/alpaca-mini", tok, tmp_path / "offline.h5", options)
    assert again.report.examples == 100 and not again.reused
    with pytest.raises(
        DataError, match="cannot reach the Hugging Face Hub and the dataset is not cached"
    ):
        prepare_dataset("ft-test/never-fetched", tok, tmp_path / "x.h5", options)


def test_configs_and_splits_from_train_yml(
    hub: LocalHub, tok: ModelTokenizer, tmp_path: Path
) -> None:
    config = DataConfig(
        train=[DataSource(path="ft-test/two-configs", config="chat")], max_seq_length=4096
    )
    settings = options_from_config(config, config_dir=tmp_path)
    result = prepare_dataset(settings.train, tok, tmp_path / "chat.h5", settings.prepare)
    assert result.report.examples == 30
    assert result.report.sources[0]["detected"].startswith("detected: sharegpt")
    # The README's default config, and a split that is not there.
    default = prepare_dataset("ft-test/two-configs", tok, tmp_path / "a.h5", settings.prepare)
    assert default.report.format == "alpaca" and default.report.examples == 10
    with pytest.raises(DataError, match=r"config 'chat' has no split 'test'; splits: train"):
        prepare_dataset(
            HubDataset("ft-test/two-configs", config="chat", split="test"), tok, tmp_path / "t.h5"
        )


def test_a_gated_dataset_takes_the_token_of_passwords_yml(
    hub: LocalHub, tok: ModelTokenizer, tmp_path: Path
) -> None:
    with pytest.raises(
        DataError, match="the Hub has no dataset 'ft-test/gated-mini' this token can read"
    ):
        prepare_dataset("ft-test/gated-mini", tok, tmp_path / "g.h5")
    write_passwords_file(tmp_path / "passwords.yml", {"hf_token": TOKEN})
    assert prepare_dataset("ft-test/gated-mini", tok, tmp_path / "g.h5").report.examples == 5


def test_what_names_a_hub_dataset(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train").touch()
    assert looks_like_hub_id("org/name", tmp_path) and looks_like_hub_id("hf://datasets/a/b")
    assert not looks_like_hub_id("data/train", tmp_path)  # there on disk
    assert not looks_like_hub_id("data/missing.jsonl", tmp_path)  # a missing file
    assert not looks_like_hub_id("a/b/c", tmp_path) and not looks_like_hub_id("https://x/y")
    assert HubDataset.parse("hf://datasets/org/name@v1.0") == HubDataset(
        "org/name", revision="v1.0"
    )
    files = ["README.md", "train.jsonl", "validation.jsonl", "data/test-0.parquet"]
    assert select_files(files, None, HubDataset("o/n")) == ["train.jsonl"]
    assert select_files(files, None, HubDataset("o/n", split="valid")) == ["validation.jsonl"]
    assert select_files(["a.jsonl", "b.csv"], None, HubDataset("o/n")) == ["a.jsonl", "b.csv"]
