"""Batches: padding, packing, chunking, seeded shuffles, and resuming without replay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ft_data.batches import Batches, pack_rows, process_share, real_tokens, target_count
from ft_data.hdf5 import PreparedDataset
from ft_data.prepare import PrepareOptions, prepare_dataset

MAX = 1024


@pytest.fixture(scope="module")
def alpaca(
    tmp_path_factory: pytest.TempPathFactory, datasets: Path, tokenizer_dir: Path
) -> Iterator[PreparedDataset]:
    path = tmp_path_factory.mktemp("batches") / "alpaca.h5"
    prepare_dataset(
        datasets / "alpaca_en_demo.json", tokenizer_dir, path, PrepareOptions(max_length=MAX)
    )
    with PreparedDataset(path) as dataset:
        yield dataset


@pytest.fixture(scope="module")
def wikisql(
    tmp_path_factory: pytest.TempPathFactory, datasets: Path, tokenizer_dir: Path
) -> Iterator[PreparedDataset]:
    path = tmp_path_factory.mktemp("batches") / "wikisql.h5"
    prepare_dataset(
        datasets / "wikisql" / "train.jsonl", tokenizer_dir, path, PrepareOptions(max_length=None)
    )
    with PreparedDataset(path) as dataset:
        yield dataset


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_padded_batches(alpaca: PreparedDataset) -> None:
    batches = Batches(alpaca, batch_size=8, max_seq_length=MAX, seed=3)
    n = len(alpaca)
    assert batches.batches_in_epoch(0) == -(-n // 8)
    seen = []
    for step, batch in enumerate(batches.iter_from(0, epochs=1)):
        rows = batches.rows(0)[step * 8 : (step + 1) * 8]
        width = max(int(alpaca.lengths[r[0]]) for r in rows)
        assert batch["input_ids"].shape == (len(rows), width)
        for row, members in enumerate(rows):
            tokens, mask = alpaca[int(members[0])]
            length = len(tokens)
            assert np.array_equal(batch["input_ids"][row, :length], tokens)
            assert np.array_equal(batch["labels"][row, :length], np.where(mask == 1, tokens, -100))
            assert (batch["labels"][row, length:] == -100).all()
            assert batch["attention_mask"][row].sum() == length
            assert (batch["input_ids"][row, length:] == alpaca.attrs["pad_token_id"]).all()
            assert np.array_equal(batch["position_ids"][row, :length], np.arange(length))
            seen.append(int(members[0]))
    assert sorted(seen) == list(range(n))  # each example once per epoch
    assert set(batch.keys()) == {
        "input_ids",
        "labels",
        "loss_mask",
        "attention_mask",
        "position_ids",
        "segment_ids",
    }
    full_width = Batches(alpaca, batch_size=8, max_seq_length=MAX, pad_to="max").batch(0)
    assert full_width["input_ids"].shape == (8, MAX)


def test_order_is_a_function_of_seed_and_epoch(alpaca: PreparedDataset) -> None:
    one = Batches(alpaca, batch_size=4, max_seq_length=MAX, seed=7)
    two = Batches(alpaca, batch_size=4, max_seq_length=MAX, seed=7)
    other = Batches(alpaca, batch_size=4, max_seq_length=MAX, seed=8)
    assert np.array_equal(one.order(2), two.order(2))
    assert np.array_equal(one.order(2), np.random.default_rng([7, 2]).permutation(len(alpaca)))
    assert not np.array_equal(one.order(0), one.order(1))
    assert not np.array_equal(one.order(0), other.order(0))
    assert np.array_equal(
        Batches(alpaca, batch_size=4, max_seq_length=MAX, shuffle=False).order(5),
        np.arange(len(alpaca)),
    )


def test_packing_keeps_every_example_whole(alpaca: PreparedDataset) -> None:
    batches = Batches(alpaca, batch_size=4, max_seq_length=MAX, mode="pack", seed=1)
    seen: list[int] = []
    for step, batch in enumerate(batches.iter_from(0, epochs=1)):
        assert batch["input_ids"].shape[1] == MAX
        for row, members in enumerate(batches.rows(0)[step * 4 : (step + 1) * 4]):
            segments = batch["segment_ids"][row]
            assert sorted(set(segments.tolist()) - {0}) == list(range(1, len(members) + 1))
            for k, index in enumerate(members.tolist(), 1):
                tokens, mask = alpaca[index]
                where = np.flatnonzero(segments == k)
                assert np.array_equal(batch["input_ids"][row, where], tokens)
                assert np.array_equal(batch["loss_mask"][row, where], mask)
                assert np.array_equal(batch["position_ids"][row, where], np.arange(len(tokens)))
                seen.append(index)
            padding = segments == 0
            assert (batch["labels"][row, padding] == -100).all() and (
                batch["attention_mask"][row] == ~padding
            ).all()
    assert sorted(seen) == list(range(len(alpaca)))
    assert batches.batches_in_epoch(0) < -(-len(alpaca) // 4)  # packing saves rows


@pytest.mark.parametrize(("mode", "batch_size"), [("pad", 8), ("pack", 3), ("chunk", 4)])
def test_resume_at_any_step_without_replay(
    mode: str, batch_size: int, alpaca: PreparedDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(alpaca, batch_size=batch_size, max_seq_length=MAX, mode=mode, seed=11)  # type: ignore[arg-type]
    whole = list(batches.iter_from(0, epochs=3))
    assert len(whole) == batches.steps(3)
    per_epoch = batches.batches_in_epoch(0)
    for k in [0, 1, per_epoch - 1, per_epoch, per_epoch + 5, len(whole) - 1]:
        fresh = Batches(alpaca, batch_size=batch_size, max_seq_length=MAX, mode=mode, seed=11)  # type: ignore[arg-type]
        built: list[int] = []
        row = fresh._row
        monkeypatch.setattr(
            fresh, "_row", lambda members, row=row, built=built: built.append(1) or row(members)
        )
        assert _same(list(fresh.iter_from(k, epochs=3)), whole[k:])
        # Only the rows of the batches it yields were read: nothing before step k.
        assert len(built) == sum(len(b["input_ids"]) for b in whole[k:])
        assert _same([fresh.batch(k)], [whole[k]])


def test_chunking_raw_text(wikisql: PreparedDataset) -> None:
    length = 256
    batches = Batches(wikisql, batch_size=4, max_seq_length=length, mode="chunk", shuffle=False)
    blocks = [
        row
        for batch in batches.iter_from(0, epochs=1)
        for row in batch["input_ids"][batch["attention_mask"] == 1].reshape(-1)
    ]
    stream, _ = wikisql.read_tokens(0, wikisql.num_tokens)
    assert np.array_equal(
        np.asarray(blocks), stream
    )  # every token once, in order, eos between texts
    first = batches.batch(0)
    assert first["input_ids"].shape == (4, length) and first["loss_mask"].all()
    assert np.array_equal(first["position_ids"][0], np.arange(length))
    blocks_count = int(np.ceil(wikisql.num_tokens / length))
    assert batches.batches_in_epoch(0) == int(np.ceil(blocks_count / 4))


def test_too_long_examples_are_refused(alpaca: PreparedDataset) -> None:
    with pytest.raises(
        ValueError,
        match=r"more than max_seq_length 64; prepare the dataset with max_length <= max_seq_length",
    ):
        Batches(alpaca, batch_size=2, max_seq_length=64)


def test_pack_rows_best_fit() -> None:
    # Next fit closes a row whenever the next example does not fit: [[0], [1, 2], [3]].
    # Best fit puts example 2 (3 tokens) with example 0 (7) and example 3 (4) with 1 (6).
    assert pack_rows([0, 1, 2, 3], [7, 6, 3, 4], capacity=10) == [[0, 2], [1, 3]]
    # With one open row at a time it is next fit.
    assert pack_rows([0, 1, 2, 3], [7, 6, 3, 4], capacity=10, open_rows=1) == [[0], [1, 2], [3]]
    # An example exactly the capacity fills a row alone.
    assert pack_rows([5, 6], [10, 10], capacity=10) == [[5], [6]]


def test_packed_rows_are_nearly_full(alpaca: PreparedDataset) -> None:
    batches = Batches(alpaca, batch_size=4, max_seq_length=MAX, mode="pack", seed=3)
    rows = batches.rows(0)
    lengths = np.asarray(alpaca.lengths)
    assert sorted(int(i) for row in rows for i in row) == list(range(len(alpaca)))
    assert max(int(lengths[row].sum()) for row in rows) <= MAX
    # Best fit leaves under 5% padding here (362 rows); next fit (one open row) needs 430.
    fill = lengths.sum() / (len(rows) * MAX)
    naive = len(pack_rows(list(range(len(alpaca))), lengths.tolist(), MAX, open_rows=1))
    assert fill > 0.95 and len(rows) < 0.9 * naive


def test_process_share_splits_rows_and_idles_a_process_without_any(alpaca: PreparedDataset) -> None:
    batch = Batches(alpaca, batch_size=3, max_seq_length=MAX, mode="pad", shuffle=False).batch(0)
    first, second = (process_share(batch, rank, 2) for rank in (0, 1))
    assert np.array_equal(first["input_ids"], batch["input_ids"][:2])
    assert np.array_equal(second["input_ids"], batch["input_ids"][2:])
    assert target_count(first) + target_count(second) == target_count(batch)
    assert real_tokens(first) + real_tokens(second) == real_tokens(batch)
    lone = {key: value[:1] for key, value in batch.items()}
    idle = process_share(lone, 1, 2)
    assert target_count(idle) == 0 and real_tokens(idle) == 0
    assert process_share(batch, 0, 1) is batch


def test_padded_width_rounds_up_to_a_multiple(alpaca) -> None:
    """`pad_multiple` rounds a padded batch's width up (never past max_seq_length): fewer
    distinct shapes for the trainer's kernels; the rows and their tokens are unchanged."""
    plain = Batches(alpaca, batch_size=4, max_seq_length=MAX, seed=1)
    rounded = Batches(alpaca, batch_size=4, max_seq_length=MAX, seed=1, pad_multiple=64)
    for step in range(3):
        a, b = plain.batch(step), rounded.batch(step)
        width = a["input_ids"].shape[1]
        assert b["input_ids"].shape[1] == min(MAX, -(-width // 64) * 64)
        assert (b["input_ids"][:, :width] == a["input_ids"]).all()
        assert b["attention_mask"][:, width:].sum() == 0
