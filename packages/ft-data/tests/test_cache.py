"""The prepared-dataset cache: content-addressed names, reuse, LRU eviction under a size limit,
the index, and FT_DATASET_CACHE_GB."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ft_data import DataError, PrepareOptions
from ft_data.cache import DatasetCache, cache_limit_bytes, prepare_cached

OPTIONS = PrepareOptions(max_length=None)


def test_named_by_key_and_reused(datasets: Path, tokenizer_dir: Path, ft_home: Path) -> None:
    source = datasets / "wikisql" / "valid.jsonl"
    first = prepare_cached(source, tokenizer_dir, OPTIONS)
    assert first.path.parent == ft_home / "datasets"  # the app's datasets folder
    assert len(first.path.stem) == 32 and first.path.suffix == ".h5" and not first.reused
    again = prepare_cached(source, tokenizer_dir, OPTIONS)
    assert (again.path, again.reused, again.report) == (first.path, True, first.report)
    other = prepare_cached(source, tokenizer_dir, PrepareOptions(max_length=64))
    assert other.path != first.path and not other.reused
    index = json.loads((ft_home / "datasets" / "index.json").read_text(encoding="utf-8"))
    assert set(index["entries"]) == {first.path.name, other.path.name}
    assert index["entries"][first.path.name]["source"] == str(source)


def test_lru_eviction(datasets: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path / "cache", limit_bytes=10**12)
    wikisql = datasets / "wikisql"
    a = cache.prepare(wikisql / "valid.jsonl", tokenizer_dir, OPTIONS)
    b = cache.prepare(wikisql / "test.jsonl", tokenizer_dir, OPTIONS)
    assert cache.prepare(wikisql / "valid.jsonl", tokenizer_dir, OPTIONS).reused  # a: used last
    assert [entry.path for entry in cache.entries()] == [b.path, a.path]
    # Room for a and c (the same rows, so the same size within a few bytes of attributes) but
    # not for b too: preparing c evicts the least recently used, b.
    cache.limit_bytes = 2 * a.path.stat().st_size + 100
    c = cache.prepare(wikisql / "valid.jsonl", tokenizer_dir, PrepareOptions(max_length=4096))
    assert [entry.path for entry in c.evicted] == [b.path]
    assert not b.path.exists() and a.path.exists() and c.path.exists()
    assert [entry.path for entry in cache.entries()] == [a.path, c.path]
    # A limit of 0 keeps only the file being used.
    cache.limit_bytes = 0
    again = cache.prepare(wikisql / "valid.jsonl", tokenizer_dir, OPTIONS)
    assert again.reused and [entry.path for entry in again.evicted] == [c.path]
    assert [entry.path for entry in cache.entries()] == [a.path]


def test_order_survives_a_lost_or_broken_index(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    cache = DatasetCache(tmp_path, limit_bytes=10**12)
    wikisql = datasets / "wikisql"
    a = cache.prepare(wikisql / "valid.jsonl", tokenizer_dir, OPTIONS)
    b = cache.prepare(wikisql / "test.jsonl", tokenizer_dir, OPTIONS)
    past = time.time() - 3600
    os.utime(b.path, (past, past))  # b's file says it was used an hour ago
    (tmp_path / "index.json").write_text("{not json", encoding="utf-8")
    assert [entry.path for entry in cache.entries()] == [b.path, a.path]  # by mtime
    cache.prepare(wikisql / "test.jsonl", tokenizer_dir, OPTIONS)  # use b: index and mtime
    assert b.path.stat().st_mtime > past + 3000
    (tmp_path / "index.json").unlink()
    assert [entry.path for entry in cache.entries()] == [a.path, b.path]
    assert not (tmp_path / "index.json").exists()  # listing never writes
    cache.record_use(a.path)
    index = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    assert list(index["entries"]) == [a.path.name] and index["version"] == 1


def test_clear_and_stale_partials(datasets: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path, limit_bytes=10**12)
    kept = cache.prepare(datasets / "wikisql" / "valid.jsonl", tokenizer_dir, OPTIONS)
    cache.prepare(datasets / "wikisql" / "test.jsonl", tokenizer_dir, OPTIONS)
    stale, fresh = tmp_path / ".x.h5.1.partial", tmp_path / ".y.h5.2.partial"
    stale.write_bytes(b"left by a writer that died")
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    removed = cache.clear(keep=[kept.path])
    assert len(removed) == 1 and [entry.path for entry in cache.entries()] == [kept.path]
    assert not stale.exists() and fresh.exists()
    assert cache.clear() and cache.entries() == [] and cache.total_bytes() == 0


def test_limit_from_the_environment() -> None:
    assert cache_limit_bytes({}) == 20 * 10**9
    assert cache_limit_bytes({"FT_DATASET_CACHE_GB": "0.5"}) == 500_000_000
    assert cache_limit_bytes({"FT_DATASET_CACHE_GB": " 0 "}) == 0
    for bad in ("lots", "-1", "nan"):
        with pytest.raises(DataError, match="FT_DATASET_CACHE_GB") as caught:
            cache_limit_bytes({"FT_DATASET_CACHE_GB": bad})
        assert "gigabytes" in str(caught.value)


def test_environment_limit_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FT_DATASET_CACHE_GB", "1.5")
    assert DatasetCache(tmp_path).limit_bytes == 1_500_000_000
