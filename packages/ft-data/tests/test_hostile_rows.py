"""Hostile data rows: nesting past the limit, runaway quotes, and fuzzed JSON/CSV input that must
end in rows or a located DataError, never a traceback."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ft_data.errors import DataError
from ft_data.json_stream import MAX_DEPTH
from ft_data.readers import read_file

FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms per example: a reader that hangs fails instead of stalling the suite
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def nested(depth: int) -> str:
    return '{"text": ' + "[" * depth + "1" + "]" * depth + "}"


@pytest.mark.parametrize("depth", [MAX_DEPTH, 100_000])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_rows_nested_too_deep_are_a_row_error_not_a_recursion_error(tmp_path, suffix, depth):
    path = tmp_path / f"deep{suffix}"
    rows = ['{"text": "fine"}', nested(depth)]
    path.write_text(
        "\n".join(rows) + "\n" if suffix == ".jsonl" else "[\n" + ",\n".join(rows) + "\n]\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as caught:
        list(read_file(path))
    line = 2 if suffix == ".jsonl" else 3  # the array's `[` has a line of its own
    assert (caught.value.file, caught.value.line) == (str(path), line)
    assert str(caught.value) == (
        f"{path}, line {line}: the row's JSON nests more than {MAX_DEPTH} levels deep. "
        "Flatten the row, or leave it out of the data"
    )


def test_rows_at_the_depth_limit_are_read(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(nested(MAX_DEPTH - 1) + "\n", encoding="utf-8")
    ((number, row),) = list(read_file(path))
    assert number == 1 and json.dumps(row["text"]).count("[") == MAX_DEPTH - 1


def test_a_quote_never_closed_is_reported_at_its_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\na,b\nc,"d\ne,f\ng,h\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(read_file(path))
    assert str(caught.value) == (
        f"{path}, line 3: a quoted field starts on this line and is never closed: it runs to the "
        'end of the file (line 5). Close the quote, or write a quote inside a quoted field twice ("")'
    )


def test_a_quote_closed_too_late_is_reported_at_its_line_not_as_a_field_count(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\na,b\n"c,d\ne,f\n"g,h,i\nj,k\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(read_file(path))
    assert str(caught.value).startswith(
        f"{path}, line 3: a quoted field starts on this line and runs to line 5, which leaves "
        "the record with 3 fields where the header has 2: a quote is probably not closed"
    )


def test_quoted_fields_over_several_lines_are_still_read(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\n"a\nb","c"\nd,"e\nf"\n', encoding="utf-8")
    assert list(read_file(path)) == [
        (1, {"prompt": "a\nb", "completion": "c"}),
        (2, {"prompt": "d", "completion": "e\nf"}),
    ]


# -- fuzz: any input ends in rows or a DataError that names the file -----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def _read_or_located_error(path: Path) -> list:
    try:
        return list(read_file(path))
    except DataError as error:
        assert error.file == str(path)
        return []


@FUZZ
@given(rows=st.lists(json_values, max_size=5), cut=st.integers(0, 400), junk=st.text(max_size=5))
def test_fuzzed_jsonl_and_json(tmp_path_factory, rows, cut, junk):
    folder = tmp_path_factory.mktemp("fuzz")
    lines = "\n".join(json.dumps(row) for row in rows)
    array = json.dumps(rows, indent=1)
    for name, text in [
        ("a.jsonl", lines),
        ("b.jsonl", lines[:cut] + junk + lines[cut:]),
        ("c.json", array),
        ("d.json", array[:cut] + junk + array[cut:]),
    ]:
        path = folder / name
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        got = _read_or_located_error(path)
        if name in ("a.jsonl", "c.json") and all(isinstance(row, dict) for row in rows):
            assert [row for _, row in got] == rows


@FUZZ
@given(
    records=st.lists(st.lists(st.text(max_size=12), min_size=2, max_size=2), max_size=6),
    cut=st.integers(0, 200),
    junk=st.sampled_from(['"', ",", "\n", '""', '"\n', "\r"]),
)
def test_fuzzed_csv(tmp_path_factory, records, cut, junk):
    folder = tmp_path_factory.mktemp("fuzz")
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([["prompt", "completion"], *records])
    text = buffer.getvalue()
    for name, content in [("a.csv", text), ("b.csv", text[:cut] + junk + text[cut:])]:
        path = folder / name
        path.write_text(content, encoding="utf-8", newline="", errors="surrogateescape")
        got = _read_or_located_error(path)
        if name == "a.csv":
            expected = [dict(zip(["prompt", "completion"], r, strict=True)) for r in records]
            assert [row for _, row in got] == expected
