"""Deduplication, contamination and dataset statistics on the real data in shared/datasets,
with planted duplicates and planted test rows whose every pair must be found exactly."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from ft_data import minhash, quality
from ft_data.contamination import find_contamination
from ft_data.formats import get_format
from ft_data.hdf5 import PreparedDataset
from ft_data.minhash import MinHasher, NearDuplicateIndex, lsh_bands
from ft_data.ngrams import word_ngrams
from ft_data.prepare import PrepareOptions, prepare_dataset
from ft_data.quality import conversation_text, find_duplicates, normalize_text
from ft_data.stats import class_balance, dataset_stats, length_stats, render_stats
from ft_data.tokenizer import ModelTokenizer, load_tokenizer

# The real duplicates of alpaca_en_demo.json: 14 rows repeat an earlier row byte for byte
# (row 398 three times). There are no other near duplicates at similarity 0.85.
ALPACA_DUPLICATES = [
    (275, 117),
    (508, 398),
    (546, 387),
    (568, 352),
    (591, 100),
    (610, 92),
    (646, 146),
    (700, 542),
    (702, 484),
    (745, 506),
    (771, 614),
    (847, 398),
    (866, 170),
    (894, 853),
]


@pytest.fixture(scope="module")
def alpaca_texts(alpaca_rows: list[dict[str, str]]) -> list[str]:
    alpaca = get_format("alpaca")
    return [conversation_text(alpaca.to_conversation(row)) for row in alpaca_rows]


def _jsonl_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def _word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The word n-grams of ft_data.ngrams, written the slow, obvious way."""
    words = re.findall(r"[0-9a-z\x80-\U0010ffff]+", text.casefold())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


# Deduplication ---------------------------------------------------------------------------------


def test_real_alpaca_duplicates(alpaca_texts: list[str]) -> None:
    exact = find_duplicates(alpaca_texts)
    assert exact.rows == 999
    assert exact.pairs() == ALPACA_DUPLICATES
    near = find_duplicates(alpaca_texts, mode="near")
    assert near.pairs() == ALPACA_DUPLICATES  # no near duplicates besides the exact ones
    assert near.similarity.tolist() == [1.0] * 14
    assert exact.keep_mask().sum() == 985


def test_planted_exact_duplicates_are_found(alpaca_texts: list[str]) -> None:
    rng = random.Random(7)
    firsts = sorted(set(range(999)) - {row for row, _ in ALPACA_DUPLICATES})
    originals = rng.sample(firsts, 50)
    variants = [
        lambda t: t.upper(),
        lambda t: "  " + t.replace(" ", "   ") + "\n",
        lambda t: t.replace("\n", " \t "),
        lambda t: t.swapcase().replace(" ", "\n"),
    ]
    rows = list(alpaca_texts)
    for k, original in enumerate(originals):
        rows.append(variants[k % len(variants)](alpaca_texts[original]))
    report = find_duplicates(iter(rows))  # a one-pass iterator is enough
    planted = [(999 + k, original) for k, original in enumerate(originals)]
    assert report.pairs() == ALPACA_DUPLICATES + planted
    assert normalize_text(rows[999]) == normalize_text(alpaca_texts[originals[0]])


def test_planted_near_duplicates_are_found_and_look_alikes_are_not(
    alpaca_texts: list[str],
) -> None:
    repeated = {row for pair in ALPACA_DUPLICATES for row in pair}
    by_length = sorted(
        (i for i in range(999) if i not in repeated), key=lambda i: -len(alpaca_texts[i].split())
    )
    originals = by_length[:30]  # 358 to 446 words
    rows = list(alpaca_texts)
    for original in originals:  # three words changed in the middle: 7 of ~350 5-grams differ
        words = alpaca_texts[original].split(" ")
        middle = len(words) // 2
        words[middle : middle + 3] = ["quite", "different", "words"]
        rows.append(" ".join(words))
    # Look-alikes that must not count: the first half of a long row, then another row's text.
    for k, original in enumerate(by_length[30:60]):
        words = alpaca_texts[original].split(" ")
        rows.append(" ".join(words[: len(words) // 2]) + " " + alpaca_texts[by_length[-1 - k]])

    near = find_duplicates(rows, mode="near", threshold=0.85)
    planted = [(999 + k, original) for k, original in enumerate(originals)]
    assert near.pairs() == sorted(ALPACA_DUPLICATES + planted)
    for (row, original), estimate in zip(near.pairs(), near.similarity, strict=True):
        a, b = _word_shingles(rows[row]), _word_shingles(rows[original])
        assert abs(estimate - len(a & b) / len(a | b)) < 0.1  # a 64-value estimate
    assert find_duplicates(rows).pairs() == ALPACA_DUPLICATES  # exact mode sees none of them
    # Deterministic: the same rows give the same report; the seed only picks hash functions.
    again = find_duplicates(rows, mode="near", threshold=0.85)
    assert again.pairs() == near.pairs()
    assert again.similarity.tolist() == near.similarity.tolist()
    assert find_duplicates(rows, mode="near", seed=1).pairs() == near.pairs()


def test_batches_and_storage_blocks_do_not_change_the_result(
    alpaca_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = alpaca_texts + [text.upper() + " (copy)" for text in alpaca_texts[:300:7]]
    whole = find_duplicates(rows, mode="near")
    assert len(whole) == 14 + 43
    monkeypatch.setattr(quality, "_BATCH_ROWS", 97)  # rows meet kept rows of earlier batches
    monkeypatch.setattr(minhash, "_BLOCK_BITS", 5)  # kept signatures span many blocks
    monkeypatch.setattr(minhash, "_BLOCK", 32)
    monkeypatch.setattr(minhash, "_PAIRS", 7)
    batched = find_duplicates(rows, mode="near")
    assert batched.pairs() == whole.pairs()
    assert batched.similarity.tolist() == whole.similarity.tolist()


def test_full_buckets_keep_their_first_rows() -> None:
    rng = np.random.default_rng(0)
    signatures = rng.integers(0, 2**32, size=(40, 64), dtype=np.uint64).astype(np.uint32)
    signatures[:, :6] = 7  # all 40 rows agree on band 0 (6 values), and on little else
    index = NearDuplicateIndex(threshold=0.85, num_perm=64, bucket_size=16)
    assert (index.bands, index.band_rows) == (10, 6)
    for part in (signatures[:25], signatures[25:]):
        duplicate_of, _ = index.add(part)
        assert (duplicate_of == -1).all()
    assert index.kept == 40
    assert np.unique(index._keys[0]).size == 1 and len(index._keys[0]) == 16
    assert all(len(keys) == 40 for keys in index._keys[1:])
    # Row 30 is not in band 0's full bucket, but its other bands find it.
    duplicate_of, similarity = index.add(signatures[[30, 3]])
    assert duplicate_of.tolist() == [30, 3] and similarity.tolist() == [1.0, 1.0]


def test_near_duplicates_on_real_text_data(datasets: Path) -> None:
    c4 = _jsonl_texts(datasets / "c4_demo.jsonl")
    assert len(find_duplicates(c4, mode="near")) == 0
    wikisql = _jsonl_texts(datasets / "wikisql" / "train.jsonl")
    # Two WikiSQL training rows are repeated verbatim; nothing else is that close.
    assert find_duplicates(wikisql).pairs() == [(161, 160), (515, 514)]
    assert find_duplicates(wikisql, mode="near").pairs() == [(161, 160), (515, 514)]


def test_duplicates_edge_cases() -> None:
    report = find_duplicates([], mode="near")
    assert (report.rows, len(report), report.to_dict()["pairs"]) == (0, 0, [])
    texts = ["", "   ", "Hi!", "hi", "?!"]
    assert find_duplicates(texts).pairs() == [(1, 0)]  # exact: only case and spaces differ
    # Near: punctuation is no word: "hi" and "Hi!" are the same words; "", "   " and "?!" have none.
    assert find_duplicates(texts, mode="near").pairs() == [(1, 0), (3, 2), (4, 0)]
    with pytest.raises(ValueError, match="mode"):
        find_duplicates(texts, mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        find_duplicates([b"bytes"])  # type: ignore[list-item]
    as_json = json.loads(json.dumps(find_duplicates(texts).to_dict()))
    assert as_json["pairs"][0] == {"row": 1, "duplicate_of": 0, "similarity": 1.0}


def test_ngram_hashes_are_stable_and_batch_independent() -> None:
    texts = ["The cat sat, on the mat today.", "the CAT sat on the mat today", "dog", ""]
    batch = word_ngrams(texts, 5)
    assert batch.row.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert batch.hash[:3].tolist() == batch.hash[3:6].tolist()  # case and punctuation ignored
    assert [batch.text(w, w + n - 1) for w, n in zip(batch.first_word, batch.words, strict=True)][
        :2
    ] == [
        "the cat sat, on the",
        "cat sat, on the mat",
    ]
    alone = word_ngrams(texts[2:3], 5)
    assert alone.hash.tolist() == batch.hash[6:].tolist()
    # Fixed values: hashes never depend on the process or machine (Python's hash() would).
    assert alone.hash.tolist() == [4830901805175515829]
    assert batch.hash[:3].tolist() == [
        4716647488594189631,
        5517530001892048184,
        3122315014866885694,
    ]


def test_minhash_estimates_jaccard_and_lsh_bands() -> None:
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(5000)]
    base = [rng.choice(vocabulary) for _ in range(400)]
    texts = [" ".join(base)]
    for changed in (5, 20, 60, 150):
        words = list(base)
        for position in rng.sample(range(400), changed):
            words[position] = "x" + words[position]
        texts.append(" ".join(words))
    signatures = MinHasher(256, seed=0).signatures(word_ngrams(texts, 5), len(texts))
    for k in range(1, len(texts)):
        a, b = _word_shingles(texts[0]), _word_shingles(texts[k])
        truth = len(a & b) / len(a | b)
        estimate = float((signatures[0] == signatures[k]).mean())
        assert abs(estimate - truth) < 0.08, (k, truth, estimate)
    assert lsh_bands(0.85, 64) == (10, 6)  # P(candidate) at 0.85 is 0.991
    assert lsh_bands(0.5, 64) == (32, 2)


# Contamination ---------------------------------------------------------------------------------


def test_untouched_wikisql_train_and_test_do_not_overlap(datasets: Path) -> None:
    train = _jsonl_texts(datasets / "wikisql" / "train.jsonl")
    test = _jsonl_texts(datasets / "wikisql" / "test.jsonl")
    report = find_contamination(train, test)
    assert (report.train_rows, report.test_rows, report.overlaps) == (1000, 100, [])
    assert report.test_share.max() < 0.5
    # The optional 13-gram rule flags table headers: same columns, different tables.
    strict = find_contamination(train, test, long_ngram=13)
    assert (len(strict.contaminated_test_rows), len(strict.overlaps)) == (17, 207)
    assert all(o.long_match and o.share < 0.5 for o in strict.overlaps)
    assert strict.overlaps[0].snippet.startswith("columns: player, no., nationality, position")


def test_planted_test_rows_are_found_with_their_pairs(datasets: Path) -> None:
    train = _jsonl_texts(datasets / "wikisql" / "train.jsonl")
    test = _jsonl_texts(datasets / "wikisql" / "test.jsonl")
    c4 = _jsonl_texts(datasets / "c4_demo.jsonl")
    rng = random.Random(0)
    picked = rng.sample(range(100), 20)
    planted: list[tuple[str, int]] = []
    for k, test_row in enumerate(picked):
        if k < 10:  # verbatim
            planted.append((test[test_row], test_row))
        else:  # a fragment, shouted, in the middle of a web page
            words = c4[k].split()
            fragment = test[test_row].upper().replace("\n", " ; ")
            text = " ".join(words[:40]) + " " + fragment + " " + " ".join(words[40:80])
            planted.append((text, test_row))
    rows = list(train)
    positions = sorted(rng.sample(range(1020), 20))
    for position, (text, _) in zip(positions, planted, strict=True):
        rows.insert(position, text)
    expected = {
        (position, test_row) for position, (_, test_row) in zip(positions, planted, strict=True)
    }

    report = find_contamination(rows, test)
    found = {(o.train_row, o.test_row) for o in report.overlaps}
    assert expected <= found
    for overlap in report.overlaps:
        if (overlap.train_row, overlap.test_row) in expected:
            assert overlap.share == 1.0  # every 8-gram of the test row is in the training row
            assert overlap.snippet.startswith("table: ")
    # The other pairs link a planted row to another test row of the same table, whose header
    # is at least half of that short row's 8-grams.
    table = [text.split("\n")[0] for text in test]
    source = dict(expected)
    extra = found - expected
    assert len(extra) == 6
    assert all(table[source[row]] == table[test_row] for row, test_row in extra)
    assert sorted(report.contaminated_train_rows) == positions
    assert report.test_share[picked].tolist() == [1.0] * 20
    assert json.loads(json.dumps(report.to_dict()))["overlaps"][0]["share"] <= 1.0


def test_contamination_rule_on_small_rows() -> None:
    test = ["one two three four five six seven eight nine ten", "tiny row"]
    train = [
        "Zero one two three four five six seven eight, and more.",  # 1 of 3 8-grams
        "one two three four five six seven eight nine",  # 2 of 3: 67%
        "TINY row!",  # a short test row matches only the same few words alone
        "a tiny row inside",
    ]
    report = find_contamination(train, test)
    assert [(o.train_row, o.test_row, round(o.share, 3)) for o in report.overlaps] == [
        (1, 0, 0.667),
        (2, 1, 1.0),
    ]
    assert report.overlaps[0].snippet == "one two three four five six seven eight nine"
    with pytest.raises(ValueError, match="longer"):
        find_contamination(train, test, ngram=8, long_ngram=8)


# Statistics ------------------------------------------------------------------------------------


def test_length_stats_are_exact_on_a_hand_made_set() -> None:
    lengths = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 40, 100]
    stats = length_stats(lengths, max_length=9, bins=5)
    assert (stats.count, stats.total, stats.min, stats.max) == (12, 195, 1, 100)
    assert stats.mean == pytest.approx(16.25)
    # Nearest rank: p50 is the 6th of 12 values, p90 the 11th (ceil(10.8)), p95/p99 the 12th.
    assert (stats.p50, stats.p90, stats.p95, stats.p99) == (6, 40, 100, 100)
    assert stats.above_max == 3
    assert stats.histogram.edges == [0, 50, 100, 150]  # round width 50 covers 0..100
    assert stats.histogram.counts == [11, 0, 1]
    assert length_stats([5, 5, 5], bins=[0, 4, 8]).histogram.counts == [0, 3]
    assert length_stats([]).count == 0
    assert length_stats(lengths).above_max is None


def test_dataset_stats_on_texts_labels_and_tokens(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = ["a", "hello world", "中", "The cat sat on the mat."]
    stats = dataset_stats(
        texts, tokenizer=tokenizer, labels=["x", "x", None, "y"], max_seq_length=3
    )
    assert stats.rows == 4
    assert stats.chars is not None and stats.chars.total == 1 + 11 + 1 + 23
    encoded = [tokenizer.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    assert stats.tokens is not None
    assert stats.tokens.total == sum(map(len, encoded))
    assert stats.tokens.above_max == sum(len(ids) > 3 for ids in encoded)
    complexity = stats.complexity
    assert complexity is not None
    # "中" is three UTF-8 bytes the tiny BPE never merged: three byte tokens, none whole.
    assert encoded[2] and len(encoded[2]) == 3
    assert complexity.byte_fallback_tokens == 3
    assert complexity.unknown_tokens == 0  # byte-level BPE has no unknown token
    assert complexity.distinct_tokens == len({i for ids in encoded for i in ids})
    assert complexity.chars_per_token == pytest.approx(36 / stats.tokens.total)
    labels = stats.labels
    assert labels is not None
    assert (labels.counts, labels.unlabelled, labels.imbalance_ratio) == ({"x": 2, "y": 1}, 1, 2.0)
    assert labels.shares == {"x": pytest.approx(2 / 3), "y": pytest.approx(1 / 3)}
    json.dumps(stats.to_dict())


def test_sentencepiece_byte_fallback_and_unknown_tokens() -> None:
    vocab = {"<unk>": 0, "<0xE4>": 1, "<0xB8>": 2, "<0xAD>": 3, "a": 4, "b": 5}
    inner = Tokenizer(models.BPE(vocab, [], byte_fallback=True, unk_token="<unk>"))
    tokenizer = ModelTokenizer(inner, fingerprint="test")
    stats = dataset_stats(["中ab", "c"], tokenizer=tokenizer)
    complexity = stats.complexity
    assert complexity is not None
    assert complexity.tokens == 6  # <0xE4> <0xB8> <0xAD> a b, then <unk> for "c" (no <0x63>)
    assert (complexity.byte_fallback_tokens, complexity.unknown_tokens) == (3, 1)
    assert complexity.unknown_share == pytest.approx(1 / 6)


def test_prepared_dataset_stats_and_report(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "alpaca.h5"
    prepare_dataset(
        datasets / "alpaca_en_demo.json", tokenizer_dir, path, PrepareOptions(max_length=None)
    )
    with PreparedDataset(path) as dataset:
        mask = dataset._mask[:]
        lengths = dataset.lengths.copy()
        stats = dataset_stats(prepared=dataset, max_seq_length=512)
    prepared = stats.prepared
    assert prepared is not None
    assert (prepared.examples, prepared.tokens) == (999, len(mask))
    assert prepared.trained_tokens == int(mask.sum())
    assert prepared.trained_share == pytest.approx(mask.sum() / len(mask))
    assert prepared.lengths.above_max == int((lengths > 512).sum())
    assert prepared.lengths.p99 == int(np.sort(lengths)[int(np.ceil(0.99 * 999)) - 1])
    report = render_stats(stats)
    assert f"prepared: 999 examples, {len(mask)} tokens" in report
    assert f"{prepared.lengths.above_max} above 512" in report
    assert "█" in report


def test_render_stats_draws_histograms(alpaca_texts: list[str]) -> None:
    stats = dataset_stats(alpaca_texts, labels=[t.split()[1] for t in alpaca_texts], bins=10)
    report = render_stats(stats, width=20)
    lines = report.splitlines()
    assert lines[0] == "rows: 999"
    bars = [line for line in lines if "│" in line]
    assert len(bars) == len(stats.chars.histogram.counts) + len(stats.labels.counts)  # type: ignore[union-attr]
    assert max(sum(char in "█▏▎▍▌▋▊▉" for char in line) for line in bars) == 20
    assert class_balance(["a", "b", "b"]).imbalance_ratio == 2.0


def test_normalized_digest_is_the_hash_of_the_normalized_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hashlib

    from ft_data import quality

    monkeypatch.setattr(quality, "_NORMALIZE_WINDOW", 7)  # windows cut inside these texts
    texts = ["", "  Hello   World  ", "abc defghijklmnop qrs  tu\n\nv Straße", "x" * 30]
    texts += ["ÄB c" * 5, "a\x1cb\u00a0c\u2003d  e"]
    for text in texts:
        expected = hashlib.blake2b(quality.normalize_text(text).encode(), digest_size=16)
        assert quality.normalized_digest(text) == expected.digest(), text
