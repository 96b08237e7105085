"""prepare_dataset on the real data: the HDF5 file, its attributes, the cache, the report."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ft_data.errors import DataError
from ft_data.formats import get_format
from ft_data.hdf5 import PreparedDataset, PreparedWriter
from ft_data.prepare import PrepareOptions, prepare_dataset
from ft_data.templates import get_template
from ft_data.tokenize import tokenize_conversations
from ft_data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, datasets: Path, tokenizer_dir: Path) -> Path:
    """Alpaca prepared with no length limit (module-wide, read-only)."""
    path = tmp_path_factory.mktemp("prepared") / "alpaca.h5"
    prepare_dataset(
        datasets / "alpaca_en_demo.json", tokenizer_dir, path, PrepareOptions(max_length=None)
    )
    return path


def test_prepared_alpaca(
    full: Path, datasets: Path, tokenizer_dir: Path, alpaca_rows: list[dict]
) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    template = get_template(None, tokenizer_template=tokenizer.chat_template)
    with PreparedDataset(full) as dataset:
        assert len(dataset) == 999
        attrs = dataset.attrs
        assert (
            attrs["tokenizer_fingerprint"]
            == hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
        )
        assert attrs["template_name"] == "tokenizer"
        assert (
            attrs["template_sha256"] == hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
        )  # type: ignore[union-attr]
        assert (attrs["max_length"], attrs["format"], attrs["format_version"]) == (0, "alpaca", 1)
        assert attrs["eos_token_id"] == attrs["pad_token_id"] == tokenizer.eos_token_id
        stats = attrs["stats"]
        assert (
            stats["format_reason"]
            == "detected: alpaca (keys 'instruction'/'output' in 999/999 rows)"
        )
        assert (stats["rows_read"], stats["examples"], stats["counts"]) == (999, 999, {})
        assert stats["tokens"] == dataset.num_tokens
        # Every example is what tokenizing the row directly gives.
        conversations = [get_format("alpaca").to_conversation(row) for row in alpaca_rows]
        direct = tokenize_conversations(conversations, template, tokenizer)
        for index in range(999):
            tokens, mask = dataset[index]
            assert tokens.tolist() == direct[index].tokens.tolist()
            assert mask.tolist() == direct[index].loss_mask.tolist()
        # Trained tokens: exactly each answer and its <|im_end|>.
        answers = sum(
            len(tokenizer.tokenizer.encode(row["output"] + "<|im_end|>").ids) for row in alpaca_rows
        )
        assert stats["trained_tokens"] == answers
    with h5py.File(full) as file:
        assert (file["tokens"].dtype, file["loss_mask"].dtype, file["offsets"].dtype) == (
            np.int32,
            np.uint8,
            np.int64,
        )
        assert file["offsets"].shape == (1000,) and file["tokens"].chunks is not None


def test_cache_reused_or_rebuilt(datasets: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "alpaca.json"
    shutil.copy(datasets / "alpaca_en_demo.json", source)
    output = tmp_path / "out" / "alpaca.h5"
    options = PrepareOptions(max_length=1024)
    first = prepare_dataset(source, tokenizer_dir, output, options)
    stamp = output.stat().st_mtime_ns
    again = prepare_dataset(source, tokenizer_dir, output, options)
    assert (first.reused, again.reused) == (False, True)
    assert output.stat().st_mtime_ns == stamp and again.report == first.report
    changes = [
        (source, PrepareOptions(max_length=512)),  # another option
        (source, PrepareOptions(max_length=1024, template="chatml")),  # another template
    ]
    for changed_source, changed in changes:
        assert not prepare_dataset(changed_source, tokenizer_dir, output, changed).reused
    assert not prepare_dataset(source, tokenizer_dir, output, options).reused  # back: rebuilt again
    assert prepare_dataset(source, tokenizer_dir, output, options).reused
    assert not prepare_dataset(source, tokenizer_dir, output, options, rebuild=True).reused
    source.write_bytes(source.read_bytes().replace(b"crepes", b"pancakes", 1))  # the source changed
    assert not prepare_dataset(source, tokenizer_dir, output, options).reused


def test_source_hash_ignores_where_the_folder_is(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(datasets / "wikisql", copy)
    one = prepare_dataset(
        datasets / "wikisql", tokenizer_dir, tmp_path / "one.h5", PrepareOptions(max_length=None)
    )
    two = prepare_dataset(copy, tokenizer_dir, tmp_path / "two.h5", PrepareOptions(max_length=None))
    assert (
        one.report.examples == 1200
        and one.report.format_reason == "detected: text (keys 'text' in 1000/1000 rows)"
    )
    hashes = [
        PreparedDataset(path).attrs["source_hash"]
        for path in (tmp_path / "one.h5", tmp_path / "two.h5")
    ]
    assert hashes[0] == hashes[1] and two.report.examples == 1200


def test_interrupted_writing_leaves_no_file(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "alpaca.h5"

    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(datasets / "alpaca_en_demo.json", tokenizer_dir, output, progress=interrupt)
    assert list(tmp_path.iterdir()) == []
    # An earlier complete file stays as it was when a rebuild is interrupted.
    prepare_dataset(
        datasets / "alpaca_en_demo.json", tokenizer_dir, output, PrepareOptions(max_length=4096)
    )
    before = output.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            datasets / "alpaca_en_demo.json",
            tokenizer_dir,
            output,
            PrepareOptions(max_length=512),
            progress=interrupt,
        )
    assert output.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["alpaca.h5"]
    with pytest.raises(RuntimeError), PreparedWriter(tmp_path / "other.h5", {}) as writer:
        writer.add(np.arange(5), np.ones(5))
        raise RuntimeError("stop")
    assert [p.name for p in tmp_path.iterdir()] == ["alpaca.h5"]


def test_too_long_rows(full: Path, datasets: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    lengths = PreparedDataset(full).lengths
    limit = 512
    long_rows = [int(i) + 1 for i in np.flatnonzero(lengths > limit)]
    assert 100 < len(long_rows) < 900
    source = datasets / "alpaca_en_demo.json"
    dropped = prepare_dataset(
        source, tokenizer_dir, tmp_path / "d.h5", PrepareOptions(max_length=limit)
    )
    assert dropped.report.examples == 999 - len(long_rows)
    assert dropped.report.counts == {"too_long": len(long_rows)}
    assert [issue.row for issue in dropped.report.issues] == long_rows
    first = dropped.report.issues[0]
    assert (
        first.file == str(source)
        and first.reason == f"{lengths[long_rows[0] - 1]} tokens > max_length {limit}"
    )
    truncated = prepare_dataset(
        source,
        tokenizer_dir,
        tmp_path / "t.h5",
        PrepareOptions(max_length=limit, on_too_long="truncate"),
    )
    report = truncated.report
    assert report.counts["truncated"] == len(long_rows)
    assert report.examples == 999 - report.counts.get("no_trained_tokens", 0)
    assert PreparedDataset(tmp_path / "t.h5").lengths.max() == limit
    with pytest.raises(DataError) as caught:
        prepare_dataset(
            source,
            tokenizer_dir,
            tmp_path / "e.h5",
            PrepareOptions(max_length=limit, on_too_long="error"),
        )
    assert (caught.value.file, caught.value.row) == (str(source), long_rows[0])
    assert "more than max_length 512" in str(caught.value)
    assert not (tmp_path / "e.h5").exists()


def test_invalid_rows_are_reported(
    alpaca_rows: list[dict], tokenizer_dir: Path, tmp_path: Path
) -> None:
    rows = [dict(row) for row in alpaca_rows]
    rows[4]["output"] = ""
    rows[16]["output"] = "   "
    del rows[29]["instruction"]
    source = tmp_path / "alpaca.json"
    source.write_text(json.dumps(rows), encoding="utf-8")
    result = prepare_dataset(
        source, tokenizer_dir, tmp_path / "a.h5", PrepareOptions(max_length=None)
    )
    assert result.report.examples == 996 and result.report.counts == {"invalid": 3}
    assert [(i.row, i.reason) for i in result.report.issues] == [
        (5, "key 'output': the field is empty"),
        (17, "key 'output': the field is empty"),
        (30, "key 'instruction': the field is missing"),
    ]
    assert f"{source}, row 5: invalid: key 'output': the field is empty" in result.report.summary()
    with pytest.raises(
        DataError, match=r"alpaca\.json, row 5, key 'output': the field is empty\. Fix the row"
    ):
        prepare_dataset(
            source, tokenizer_dir, tmp_path / "b.h5", PrepareOptions(on_invalid="error")
        )


def test_raw_text_for_continued_pretraining(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    result = prepare_dataset(
        datasets / "c4_demo.jsonl",
        tokenizer_dir,
        tmp_path / "c4.h5",
        PrepareOptions(max_length=None),
    )
    assert (result.report.examples, result.report.template) == (300, None)
    first = json.loads((datasets / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()[0])[
        "text"
    ]
    with PreparedDataset(tmp_path / "c4.h5") as dataset:
        tokens, _ = dataset[0]
        assert tokens.tolist() == [*tokenizer.tokenizer.encode(first).ids, tokenizer.eos_token_id]
        assert all(
            dataset[i][0][-1] == tokenizer.eos_token_id and dataset[i][1].all() for i in range(300)
        )
        assert dataset.attrs["stats"]["trained_tokens"] == dataset.num_tokens


def test_bad_utf8_rows_dropped_are_reported(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    lines = (datasets / "c4_demo.jsonl").read_bytes().splitlines(keepends=True)[:20]
    lines[6] = lines[6].replace(b"the", b"th\xe9", 1)
    source = tmp_path / "c4.jsonl"
    source.write_bytes(b"".join(lines))
    with pytest.raises(DataError, match=r"c4\.jsonl, line 7: the text is not valid UTF-8"):
        prepare_dataset(source, tokenizer_dir, tmp_path / "c4.h5", PrepareOptions(max_length=None))
    result = prepare_dataset(
        source,
        tokenizer_dir,
        tmp_path / "c4.h5",
        PrepareOptions(max_length=None, on_bad_utf8="drop"),
    )
    assert result.report.examples == 19 and result.report.counts == {"bad_utf8": 1}
    assert result.report.issues[0].row == 7
