"""Every reader against the real datasets, converted to each file type in tmp_path."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from ft_data import readers
from ft_data.errors import DataError
from ft_data.json_stream import JsonStream
from ft_data.readers import find_files, read_file, read_rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def test_json_array_real_alpaca(datasets: Path, alpaca_rows: list[dict]) -> None:
    rows = list(read_rows(datasets / "alpaca_en_demo.json"))
    assert len(rows) == 999
    assert [number for number, _ in rows] == list(range(1, 1000))
    assert [row for _, row in rows] == alpaca_rows


def test_json_array_is_streamed_in_a_bounded_window(
    datasets: Path, alpaca_rows: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "_CHUNK_CHARS", 4096)
    windows: list[int] = []
    fill = JsonStream._fill

    def spy(self: JsonStream) -> bool:
        result = fill(self)
        windows.append(len(self.buf))
        return result

    monkeypatch.setattr(JsonStream, "_fill", spy)
    rows = [row for _, row in read_rows(datasets / "alpaca_en_demo.json")]
    assert rows == alpaca_rows
    longest = max(len(json.dumps(row, ensure_ascii=False, indent=2)) for row in alpaca_rows)
    # The window holds one chunk plus what is left of the element being parsed, never the file.
    assert max(windows) <= 2 * (4096 + longest)
    assert len(windows) > 100


def test_jsonl_real_c4_and_wikisql(datasets: Path) -> None:
    c4 = list(read_rows(datasets / "c4_demo.jsonl"))
    assert len(c4) == 300
    assert c4[0][0] == 1 and set(c4[0][1]) == {"text"}
    assert len(list(read_rows(datasets / "wikisql" / "train.jsonl"))) == 1000


def test_folder_and_glob_continue_row_numbers(datasets: Path) -> None:
    folder = list(read_rows(datasets / "wikisql"))
    assert len(folder) == 1200
    assert [number for number, _ in folder] == list(range(1, 1201))
    assert [p.name for p in find_files(datasets / "wikisql")] == [
        "test.jsonl",
        "train.jsonl",
        "valid.jsonl",
    ]
    assert list(read_rows(str(datasets / "wikisql" / "*.jsonl"))) == folder


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "jsonl"])
def test_converted_alpaca_reads_back_equal(
    kind: str, alpaca_rows: list[dict], tmp_path: Path
) -> None:
    frame = pl.DataFrame(alpaca_rows)
    path = tmp_path / f"alpaca.{kind}"
    if kind == "csv":
        frame.write_csv(path)
    elif kind == "tsv":
        frame.write_csv(path, separator="\t")
    elif kind == "parquet":
        frame.write_parquet(path, row_group_size=100)  # ten row groups, read in batches
    else:
        _write_jsonl(path, alpaca_rows)
    rows = list(read_rows(path))
    assert [number for number, _ in rows] == list(range(1, 1000))
    assert [row for _, row in rows] == alpaca_rows


def test_parquet_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_PARQUET_BATCH_ROWS", 7)
    path = tmp_path / "numbers.parquet"
    pl.DataFrame({"text": [f"row {i}" for i in range(100)]}).write_parquet(path, row_group_size=30)
    assert [row["text"] for _, row in read_file(path)] == [f"row {i}" for i in range(100)]


def test_text_markdown_and_html_are_one_row(datasets: Path, tmp_path: Path) -> None:
    document = json.loads((datasets / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()[0])[
        "text"
    ]
    (tmp_path / "doc.txt").write_text(document, encoding="utf-8")
    (tmp_path / "doc.md").write_text("# Title\n\n" + document, encoding="utf-8")
    paragraphs = "".join(f"<p>{p}</p>" for p in document.split("\n"))
    page = (
        "<html><head><title>Air</title></head><body><nav><a href='/'>Home</a> | <a href='/about'>About us</a></nav>"
        f"<article><h1>Air cleaners</h1>{paragraphs}</article><footer>Copyright 2024 Example Inc.</footer></body></html>"
    )
    (tmp_path / "page.html").write_text(page, encoding="utf-8")
    assert list(read_file(tmp_path / "doc.txt")) == [(1, {"text": document})]
    assert list(read_file(tmp_path / "doc.md")) == [(1, {"text": "# Title\n\n" + document})]
    [(number, row)] = list(read_file(tmp_path / "page.html"))
    assert number == 1
    assert all(paragraph in row["text"] for paragraph in document.split("\n"))
    assert "About us" not in row["text"] and "Copyright" not in row["text"]


def test_malformed_jsonl_names_file_and_line(datasets: Path, tmp_path: Path) -> None:
    lines = (datasets / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    lines[2] = lines[2][:-1]  # drop the closing brace
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(read_rows(path))
    assert caught.value.file == str(path) and caught.value.line == 3
    assert str(caught.value).startswith(f"{path}, line 3: not valid JSON")


def test_malformed_json_array_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n  {"text": "c"}\n]\n', encoding="utf-8")
    with pytest.raises(
        DataError, match=r"broken\.json, line 4: expected ',' or '\]' after an array element"
    ):
        list(read_rows(path))
    path.write_text('[\n  {"text": "a"},\n  {"text": tru}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: not valid JSON"):
        list(read_rows(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_broken_utf8_error_replace_drop(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"bad{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n{"text": "also fine"}\n')
    elif suffix == ".json":
        path.write_bytes(b'[\n{"text": "fine"},\n{"text": "caf\xe9"},\n{"text": "also fine"}\n]\n')
    else:
        path.write_bytes(b"text\nfine\ncaf\xe9\nalso fine\n")
    line = 3 if suffix == ".json" else 2 if suffix == ".jsonl" else 3
    with pytest.raises(DataError, match=rf"line {line}: the text is not valid UTF-8"):
        list(read_rows(path))
    replaced = [row["text"] for _, row in read_rows(path, on_bad_utf8="replace")]
    assert replaced == ["fine", "caf\ufffd", "also fine"]
    skipped: list[tuple[Path, int, str]] = []
    kept = list(read_rows(path, on_bad_utf8="drop", on_skip=lambda *where: skipped.append(where)))
    assert [row["text"] for _, row in kept] == ["fine", "also fine"]
    assert skipped == [(path, line, "invalid UTF-8")]


def test_csv_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["prompt", "completion"], ["a", "b"], ["c", "d", "e"]])
    with pytest.raises(
        DataError, match=r"rows\.csv, line 3: the record has 3 fields, the header has 2"
    ):
        list(read_rows(path))


def test_missing_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        list(read_rows(tmp_path / "absent.jsonl"))
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot tell how to read a \.xlsx file"):
        list(read_rows(tmp_path / "data.xlsx"))
    with pytest.raises(DataError, match="matches no files"):
        list(read_rows(str(tmp_path / "*.parquet")))


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local http.server serving a folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_url_download(
    http_folder: tuple[str, Path], datasets: Path, alpaca_rows: list[dict]
) -> None:
    base, folder = http_folder
    shutil.copy(datasets / "alpaca_en_demo.json", folder / "alpaca.json")
    shutil.copy(datasets / "c4_demo.jsonl", folder / "c4.jsonl")
    assert [row for _, row in read_rows(f"{base}/alpaca.json")] == alpaca_rows
    assert len(list(read_rows(f"{base}/c4.jsonl"))) == 300
    with pytest.raises(DataError, match="download failed: HTTP 404"):
        list(read_rows(f"{base}/missing.jsonl"))
