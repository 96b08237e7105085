"""`ft dataset prepare|inspect|stats|cache` on the real datasets in shared/datasets, with a tiny
tokenizer trained in the test (byte-level BPE and SmolLM2's ChatML template)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from ft_cli.dataset_cmd import dataset
from ft_data import Batches, PreparedDataset, load_tokenizer
from ft_data.quality import normalize_text


def _ft_data_conftest() -> ModuleType:
    """packages/ft-data/tests/conftest.py, for the tiny tokenizer the ft-data tests use."""
    path = Path(__file__).resolve().parents[3] / "packages" / "ft-data" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("ft_data_tests_conftest", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FT_DATA_TESTS = _ft_data_conftest()
PREPARE_KEYS = {
    "source",
    "output",
    "reused",
    "format",
    "detected",
    "template",
    "model",
    "max_seq_length",
    "rows_read",
    "examples",
    "left_out",
    "left_out_by_reason",
    "truncated",
    "reasoning_not_rendered",
    "tokens",
    "trained_tokens",
    "longest",
    "label_names",
    "sources",
    "kind",
    "split_rows",
    "rejected_tokens",
    "seconds",
    "evicted",
}
EXAMPLE_KEYS = {
    "file",
    "row",
    "status",
    "text",
    "tokens",
    "trained_tokens",
    "kept_tokens",
    "trained_spans",
    "blocks",
}


@pytest.fixture(scope="module")
def datasets() -> Path:
    """shared/datasets (or $FT_TEST_DATASETS)."""
    candidates = [os.environ.get("FT_TEST_DATASETS", "")]
    candidates += [str(parent / "shared" / "datasets") for parent in Path(__file__).parents]
    for candidate in candidates:
        if candidate and (Path(candidate) / "alpaca_en_demo.json").is_file():
            return Path(candidate)
    pytest.skip("shared/datasets not found; set FT_TEST_DATASETS")


@pytest.fixture(scope="module")
def alpaca_rows(datasets: Path) -> list[dict[str, str]]:
    return json.loads((datasets / "alpaca_en_demo.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, alpaca_rows: list[dict[str, str]]) -> Path:
    """A model folder with tokenizer.json (byte-level BPE, 800 tokens) and a ChatML template."""
    return FT_DATA_TESTS.build_chat_tokenizer(tmp_path_factory.mktemp("model"), alpaca_rows)  # type: ignore[no-any-return]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(dataset, [str(arg) for arg in args], catch_exceptions=False)


def run_json(*args: str | Path) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def unique_rows(rows: list[dict[str, str]], keys: tuple[str, ...]) -> tuple[int, list[int]]:
    """How many distinct rows, and the 1-based numbers of the repeats (compared as prepare
    compares them: case-folded, whitespace collapsed)."""
    seen: set[tuple[str, ...]] = set()
    repeats = []
    for number, row in enumerate(rows, 1):
        key = tuple(normalize_text(row.get(k, "")) for k in keys)
        if key in seen:
            repeats.append(number)
        seen.add(key)
    return len(seen), repeats


def answer_tokens(model_dir: Path, answers: list[str]) -> int:
    """Tokens the model learns for these answers: each one and the <|im_end|> that closes it."""
    tokenizer = load_tokenizer(model_dir).tokenizer
    return sum(len(tokenizer.encode(answer + "<|im_end|>").ids) for answer in answers)


# prepare ----------------------------------------------------------------------------------------


def test_prepare_alpaca(
    datasets: Path, alpaca_rows: list[dict[str, str]], model_dir: Path, ft_home: Path
) -> None:
    source = datasets / "alpaca_en_demo.json"
    result = run("prepare", source, "--model", model_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "detected: alpaca (keys 'instruction'/'output' in 999/999 rows)"
    assert lines[2] == "rows:      999 read, 985 kept, 14 left out"

    report = run_json("prepare", source, "--model", model_dir)
    assert set(report) == PREPARE_KEYS
    distinct, repeats = unique_rows(alpaca_rows, ("instruction", "input", "output"))
    assert (distinct, len(repeats)) == (985, 14)  # the demo set holds 14 exact repeats
    assert report["reused"] is True  # the second run finds the first one's file
    assert (report["rows_read"], report["examples"], report["left_out"]) == (999, 985, 14)
    duplicates = report["left_out_by_reason"]["duplicate"]
    assert duplicates["count"] == 14 and list(report["left_out_by_reason"]) == ["duplicate"]
    assert [row["row"] for row in duplicates["rows"]] == repeats[:5]
    assert duplicates["rows"][0] == {
        "file": str(source),
        "row": repeats[0],
        "reason": "the same conversation as an earlier row",
    }
    assert report["truncated"] == {"count": 0, "rows": []}
    assert (report["format"], report["template"], report["max_seq_length"]) == (
        "alpaca",
        "tokenizer",
        2048,
    )
    # Into the cache, named by its key; the numbers are those of the file.
    output = Path(report["output"])
    assert output.parent == ft_home / "datasets" and len(output.stem) == 32
    with PreparedDataset(output) as prepared:
        assert len(prepared) == 985 and prepared.num_tokens == report["tokens"]
        assert (
            int(prepared.read_tokens(0, prepared.num_tokens)[1].sum()) == report["trained_tokens"]
        )
        assert int(prepared.lengths.max()) == report["longest"]
    kept = [row for number, row in enumerate(alpaca_rows, 1) if number not in repeats]
    assert report["trained_tokens"] == answer_tokens(model_dir, [row["output"] for row in kept])


def test_prepare_raw_text(datasets: Path, model_dir: Path) -> None:
    source = datasets / "wikisql" / "train.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    distinct, repeats = unique_rows(rows, ("text",))
    report = run_json("prepare", source, "--tokenizer", model_dir / "tokenizer.json")
    assert report["detected"] == "detected: text (keys 'text' in 1000/1000 rows)"
    assert (report["rows_read"], report["examples"]) == (1000, distinct)
    assert report["left_out_by_reason"]["duplicate"]["count"] == len(repeats)
    assert report["template"] is None and report["trained_tokens"] == report["tokens"]


def _multi_turn(rows: list[dict[str, str]], count: int) -> list[list[tuple[str, str]]]:
    """Pairs of Alpaca rows as two-turn conversations of (question, answer)."""
    return [
        [
            (rows[i]["instruction"], rows[i]["output"]),
            (rows[i + 1]["instruction"], rows[i + 1]["output"]),
        ]
        for i in range(0, 2 * count, 2)
    ]


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "prompt_completion"])
def test_prepare_each_file_kind_and_format(
    kind: str, alpaca_rows: list[dict[str, str]], model_dir: Path, tmp_path: Path
) -> None:
    """Real Alpaca rows written as CSV, TSV, Parquet and prompt/completion JSON Lines: each is
    read, detected and trained on its answers."""
    import polars as pl

    rows = alpaca_rows[:150]
    distinct, repeats = unique_rows(rows, ("instruction", "input", "output"))
    source = tmp_path / f"rows.{ {'prompt_completion': 'jsonl'}.get(kind, kind) }"
    frame = pl.DataFrame(rows)
    if kind == "csv":
        frame.write_csv(source)
    elif kind == "tsv":
        frame.write_csv(source, separator="\t")
    elif kind == "parquet":
        frame.write_parquet(source)
    else:
        pairs = [{"prompt": r["instruction"], "completion": r["output"]} for r in rows]
        source.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        distinct, repeats = unique_rows(pairs, ("prompt", "completion"))
    report = run_json("prepare", source, "--model", model_dir)
    expected = {
        "prompt_completion": "detected: prompt_completion (keys 'prompt'/'completion' in 150/150 rows)"
    }.get(kind, "detected: alpaca (keys 'instruction'/'output' in 150/150 rows)")
    assert report["detected"] == expected
    assert (report["rows_read"], report["examples"]) == (150, distinct)
    kept = [row for number, row in enumerate(rows, 1) if number not in repeats]
    assert report["trained_tokens"] == answer_tokens(model_dir, [row["output"] for row in kept])


def test_prepare_a_folder_of_text_markdown_and_html(
    datasets: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Real C4 texts as .txt, .md and .html files in a folder: one row each, all trained."""
    texts = [
        json.loads(line)["text"]
        for line in (datasets / "c4_demo.jsonl").read_text().splitlines()[:6]
    ]
    folder = tmp_path / "docs"
    folder.mkdir()
    for index, text in enumerate(texts):
        if index % 3 == 0:
            (folder / f"{index}.txt").write_text(text, encoding="utf-8")
        elif index % 3 == 1:
            (folder / f"{index}.md").write_text(f"# Document {index}\n\n{text}", encoding="utf-8")
        else:
            html = f"<html><body><nav>menu</nav><article><p>{text}</p></article></body></html>"
            (folder / f"{index}.html").write_text(html, encoding="utf-8")
    report = run_json("prepare", folder, "--model", model_dir)
    assert report["detected"].startswith("detected: text (keys 'text' in 6/6 rows)")
    assert (report["rows_read"], report["left_out"], report["kind"]) == (6, 0, "text")
    # A text longer than max_seq_length is kept whole, as several blocks.
    assert report["examples"] >= 6 and (report["examples"] > 6) == (report["split_rows"] > 0)
    assert report["template"] is None and report["trained_tokens"] == report["tokens"] > 0


@pytest.mark.parametrize("shape", ["sharegpt", "openai"])
def test_prepare_multi_turn(
    shape: str, alpaca_rows: list[dict[str, str]], model_dir: Path, tmp_path: Path
) -> None:
    chats = _multi_turn(alpaca_rows, 50)
    source = tmp_path / f"{shape}.jsonl"
    with open(source, "w", encoding="utf-8") as out:
        for chat in chats:
            if shape == "sharegpt":
                turns = [
                    {"from": who, "value": text}
                    for q, a in chat
                    for who, text in (("human", q), ("gpt", a))
                ]
                out.write(json.dumps({"conversations": turns}) + "\n")
            else:
                turns = [
                    {"role": who, "content": text}
                    for q, a in chat
                    for who, text in (("user", q), ("assistant", a))
                ]
                out.write(json.dumps({"messages": turns}) + "\n")
    keys = {"sharegpt": "'conversations'/'from'/'value'", "openai": "'messages'/'role'/'content'"}
    report = run_json("prepare", source, "--model", model_dir)
    assert report["detected"] == f"detected: {shape} (keys {keys[shape]} in 50/50 rows)"
    assert (report["rows_read"], report["examples"], report["left_out"]) == (50, 50, 0)
    answers = [answer for chat in chats for _, answer in chat]
    assert report["trained_tokens"] == answer_tokens(model_dir, answers)  # both turns, each time

    shown = run_json("inspect", source, "--model", model_dir, "-n", "2")
    for example, chat in zip(shown["examples"], chats[:2], strict=True):
        assert set(example) == EXAMPLE_KEYS and example["status"] == "kept"
        trained = [example["text"][start:end] for start, end in example["trained_spans"]]
        assert trained == [answer + "<|im_end|>" for _, answer in chat]


def test_prepare_to_an_output_folder(
    datasets: Path, model_dir: Path, tmp_path: Path, ft_home: Path
) -> None:
    source = datasets / "wikisql" / "valid.jsonl"
    report = run_json("prepare", source, "--model", model_dir, "--output", tmp_path / "out")
    assert report["output"] == str(tmp_path / "out" / "valid.h5") and report["evicted"] == []
    assert (tmp_path / "out" / "valid.h5").is_file()
    assert not list(ft_home.glob("**/*.h5"))  # nothing went into the cache
    again = run_json("prepare", source, "--model", model_dir, "-o", tmp_path / "out" / "v.h5")
    assert again["output"] == str(tmp_path / "out" / "v.h5") and again["reused"] is False
    (tmp_path / "a-file").touch()
    message = _error(run("prepare", source, "--model", model_dir, "-o", tmp_path / "a-file" / "x"))
    assert message.startswith(f"error: {tmp_path / 'a-file'}")  # the OS says what (varies)


def test_prepare_from_train_yml(
    datasets: Path, alpaca_rows: list[dict[str, str]], model_dir: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.json").write_bytes((datasets / "alpaca_en_demo.json").read_bytes())
    (project / "model").symlink_to(model_dir, target_is_directory=True)
    (project / "train.yml").write_text(
        "model: model\n"
        "data:\n"
        "  train: data/train.json\n"
        "  template: chatml\n"
        "  system_prompt: Be brief.\n"
        "  max_seq_length: 256\n"
        "  overlong: drop\n"
        "  train_on: all\n"
        "  dedup: none\n",
        encoding="utf-8",
    )
    report = run_json("prepare", "-c", project / "train.yml")
    assert report["source"] == str(project / "data" / "train.json")  # relative to train.yml
    assert (report["template"], report["max_seq_length"]) == ("chatml", 256)
    too_long = report["left_out_by_reason"]["too_long"]["count"]
    assert list(report["left_out_by_reason"]) == ["too_long"]  # dedup: none keeps the repeats
    assert report["examples"] == 999 - too_long and 100 < too_long < 900
    assert report["trained_tokens"] == report["tokens"]  # train_on: all
    assert report["longest"] <= 256
    # Options win over train.yml.
    wider = run_json("prepare", "-c", project / "train.yml", "--max-seq-length", "4096")
    assert wider["max_seq_length"] == 4096 and wider["examples"] == 999
    shown = run_json("inspect", "-c", project / "train.yml", "-n", "1")
    text = shown["examples"][0]["text"]
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert shown["examples"][0]["trained_spans"] == [[0, len(text)]]  # train_on: all


def test_a_mixture_from_train_yml(
    alpaca_rows: list[dict[str, str]], model_dir: Path, tmp_path: Path
) -> None:
    """data.train as a list: prepare says what each source gave; inspect shows each source."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "a.json").write_text(json.dumps(alpaca_rows[:100]), encoding="utf-8")
    with open(project / "b.jsonl", "w", encoding="utf-8") as out:
        for row in alpaca_rows[100:150]:
            chat = [
                {"role": "user", "content": row["instruction"]},
                {"role": "assistant", "content": row["output"]},
            ]
            out.write(json.dumps({"messages": chat}) + "\n")
    (project / "train.yml").write_text(
        "data:\n  train:\n    - {path: a.json, rows: 30}\n    - {path: b.jsonl, ratio: 2}\n",
        encoding="utf-8",
    )
    report = run_json("prepare", "-c", project / "train.yml", "--model", model_dir)
    assert (report["format"], report["examples"]) == ("mixture", 130)
    assert [(s["source"], s["available"], s["taken"]) for s in report["sources"]] == [
        (str(project / "a.json"), 100, 30),
        (str(project / "b.jsonl"), 50, 100),
    ]
    shown = run_json("inspect", "-c", project / "train.yml", "--model", model_dir, "-n", "1")
    assert [one["detected"].split(" (")[0] for one in shown["sources"]] == [
        "detected: alpaca",
        "detected: openai",
    ]


# inspect ----------------------------------------------------------------------------------------


def test_inspect_matches_what_prepare_writes(
    datasets: Path, alpaca_rows: list[dict[str, str]], model_dir: Path
) -> None:
    source = datasets / "alpaca_en_demo.json"
    shown = run_json("inspect", source, "--model", model_dir, "-n", "3")
    assert shown["detected"] == "detected: alpaca (keys 'instruction'/'output' in 999/999 rows)"
    prepared = run_json("prepare", source, "--model", model_dir)
    with PreparedDataset(prepared["output"]) as data:
        for index, example in enumerate(shown["examples"]):
            assert set(example) == EXAMPLE_KEYS
            assert (example["file"], example["row"], example["status"]) == (
                str(source),
                index + 1,
                "kept",
            )
            tokens, mask = data[index]
            assert (example["tokens"], example["trained_tokens"]) == (len(tokens), int(mask.sum()))
            assert example["kept_tokens"] == len(tokens)
            [(start, end)] = example["trained_spans"]
            assert example["text"][start:end] == alpaca_rows[index]["output"] + "<|im_end|>"
            assert example["text"].endswith("<|im_end|>\n")


def test_inspect_highlights_trained_tokens(
    datasets: Path, alpaca_rows: list[dict[str, str]], model_dir: Path
) -> None:
    source = datasets / "alpaca_en_demo.json"
    plain = run("inspect", source, "--model", model_dir, "-n", "2", "--no-color")
    assert plain.exit_code == 0
    second = alpaca_rows[1]
    assert (
        f"<|im_start|>user\n{second['instruction']}<|im_end|>\n<|im_start|>assistant\n«{second['output']}<|im_end|>»"
        in plain.stdout
    )
    assert "── 2. alpaca_en_demo.json row 2 · " in plain.stdout
    assert "legend: «trained» = tokens the model learns to write" in plain.stdout

    coloured = run("inspect", source, "--model", model_dir, "-n", "2", "--color")
    green_bold = "\x1b[32m\x1b[1m"
    assert f"{green_bold}{second['output']}<|im_end|>\x1b[0m" in coloured.stdout
    assert "\x1b[2m<|im_start|>system" in coloured.stdout  # the prompt is dim

    full = run_json("inspect", source, "--model", model_dir, "-n", "1")["examples"][0]
    limit = full["tokens"] - full["trained_tokens"] + 10  # the prompt and 10 answer tokens
    short = run_json("inspect", source, "--model", model_dir, "-n", "1", "--max-seq-length", limit)
    [example] = short["examples"]
    assert (example["status"], example["kept_tokens"]) == ("truncated", limit)
    cut = run("inspect", source, "--model", model_dir, "-n", "1", "--max-seq-length", limit)
    assert f"[cut here: max_seq_length {limit}]" in cut.stdout
    assert f"; cut to {limit} ──" in cut.stdout
    tiny = run_json("inspect", source, "--model", model_dir, "-n", "1", "--max-seq-length", "8")
    assert tiny["examples"][0]["status"] == "no_trained_tokens"  # only the prompt fits


# stats ------------------------------------------------------------------------------------------


def test_stats(datasets: Path, model_dir: Path) -> None:
    source = datasets / "alpaca_en_demo.json"
    report = run_json("stats", source, "--model", model_dir)
    prepared = run_json("prepare", source, "--model", model_dir)
    assert prepared["reused"] is True and report["prepared"] == prepared["output"]
    assert report["rows"] == {
        "read": 999,
        "examples": 985,
        "left_out": 14,
        "by_reason": {"duplicate": 14},
    }
    assert report["tokens"]["total"] == prepared["tokens"]
    assert report["tokens"]["trained"] == prepared["trained_tokens"]
    with PreparedDataset(prepared["output"]) as data:
        lengths = data.lengths
        assert report["example_tokens"]["p50"] == int(np.percentile(lengths, 50, method="nearest"))
        assert report["example_tokens"]["max"] == int(lengths.max()) == prepared["longest"]
        trained = [int(data[i][1].sum()) for i in range(len(data))]
        assert report["trained_tokens_per_example"]["p90"] == int(
            np.percentile(trained, 90, method="nearest")
        )
        packed = Batches(data, batch_size=1, max_seq_length=2048, mode="pack", shuffle=False)
        assert report["packing"]["sequences"] == len(packer_rows := packed.rows(0)) and packer_rows
    text = run("stats", source, "--model", model_dir).stdout
    assert "rows:      999 read -> 985 examples (duplicate 14)" in text


def test_stats_finds_planted_duplicates_and_overlap(
    alpaca_rows: list[dict[str, str]], model_dir: Path, tmp_path: Path
) -> None:
    """Real rows with planted copies (case and spacing changed: exact once normalized), one
    near copy (one word changed), labels, and an eval file holding two training rows."""
    rows = [
        dict(row, topic=("howto" if i % 3 else "other")) for i, row in enumerate(alpaca_rows[:120])
    ]
    rows.append(dict(rows[7], output=rows[7]["output"].upper() + "  "))  # row 121 = row 8
    near = dict(rows[11])  # a 206-word answer: one word changed leaves it > 0.9 similar
    words = near["output"].split()
    words[-3] = "splendid"
    rows.append(dict(near, output=" ".join(words)))  # row 122 ~ row 12
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    held_out = [dict(row) for row in alpaca_rows[500:530]]
    held_out[4] = dict(alpaca_rows[40])  # eval row 5 is training row 41
    held_out[20] = dict(alpaca_rows[90], output=alpaca_rows[90]["output"] + " Indeed.")
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(held_out), encoding="utf-8")

    report = run_json(
        "stats", train, "--model", model_dir, "--label-column", "topic", "--eval", evaluation
    )
    assert report["rows"]["by_reason"] == {"duplicate": 1}  # prepare drops the exact copy
    assert report["label_names"] == ["howto", "other"]
    quality = report["quality"]
    assert quality["rows"] == 122
    duplicates = quality["duplicates"]
    assert (duplicates["exact"], duplicates["near"], duplicates["near_threshold"]) == (1, 2, 0.85)
    assert [(r["row"], r["duplicate_of"]) for r in duplicates["exact_rows"]] == [(121, 8)]
    assert [(r["row"], r["duplicate_of"]) for r in duplicates["near_rows"]] == [(121, 8), (122, 12)]
    assert 0.85 <= duplicates["near_rows"][1]["similarity"] < 1.0
    assert quality["labels"]["counts"] == {"howto": 82, "other": 40}
    tokens, chars = quality["lengths"]["tokens"], quality["lengths"]["chars"]
    assert (tokens["count"], chars["count"], tokens["max_length"]) == (122, 122, 2048)
    assert tokens["above_max"] == 0 and sum(tokens["histogram"]["counts"]) == 122
    assert chars["max"] == max(
        len(
            f"user: {r['instruction']}"
            + (f"\n{r['input']}" if r["input"] else "")
            + f"\nassistant: {r['output']}"
        )
        for r in rows
    )
    complexity = quality["complexity"]
    assert complexity["tokens"] == tokens["total"] and 0 < complexity["type_token_ratio"] < 1
    overlap = quality["contamination"]
    assert (overlap["train_rows"], overlap["eval_rows"]) == (122, 30)
    assert [(o["train_row"], o["eval_row"]) for o in overlap["overlaps"]] == [(41, 5), (91, 21)]
    assert overlap["overlaps"][0]["share"] == 1.0 and overlap["overlaps"][1]["share"] < 1.0

    text = run(
        "stats", train, "--model", model_dir, "--near-threshold", "0.99", "--eval", evaluation
    )
    assert text.exit_code == 0, text.output
    out = text.stdout
    assert "near (>= 0.99)" in out and "121: 8" in out
    assert "tokens per row (without the template): mean" in out and "│█" in out
    assert "2 of 30 rows of" in out and "type/token ratio" in out


# errors -----------------------------------------------------------------------------------------


def _error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.stderr


def test_bad_json_line(datasets: Path, model_dir: Path, tmp_path: Path) -> None:
    lines = (datasets / "wikisql" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    source = tmp_path / "broken.jsonl"
    source.write_text(
        "\n".join([*lines[:6], '{"text": "cut sh', *lines[6:9]]) + "\n", encoding="utf-8"
    )
    message = _error(run("prepare", source, "--model", model_dir))
    assert message.startswith(f"error: {source}:7: not valid JSON: ")
    assert "each line of a JSON Lines file must hold one complete JSON object" in message


def test_bad_json_in_an_array(datasets: Path, model_dir: Path, tmp_path: Path) -> None:
    text = (datasets / "alpaca_en_demo.json").read_text(encoding="utf-8")
    at = text.index('"output":', len(text) // 2)
    source = tmp_path / "broken.json"
    source.write_text(text[:at] + '"output" ' + text[at + len('"output":') :], encoding="utf-8")
    line = text.count("\n", 0, at) + 1
    message = _error(run("inspect", source, "--model", model_dir))
    assert message == f"error: {source}:{line}: not valid JSON: Expecting ':' delimiter\n"


def test_invalid_utf8(datasets: Path, model_dir: Path, tmp_path: Path) -> None:
    lines = (datasets / "wikisql" / "valid.jsonl").read_bytes().splitlines(keepends=True)
    source = tmp_path / "latin1.jsonl"
    source.write_bytes(b"".join([*lines[:3], '{"text": "café"}\n'.encode("latin-1"), *lines[3:5]]))
    message = _error(run("prepare", source, "--model", model_dir))
    assert message.startswith(f"error: {source}:4: the text is not valid UTF-8\n")


def test_unknown_model_and_no_data(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no train.yml here
    message = _error(run("prepare", datasets / "alpaca_en_demo.json", "--model", "smollm-135"))
    assert message.startswith("error: unknown model 'smollm-135': it is not a local folder")
    assert "Similar catalog aliases: smollm2-135m" in message
    usage = run("prepare")
    assert usage.exit_code == 2 and "give the data (SRC), or -c train.yml" in usage.output


def test_unknown_format_and_missing_file(datasets: Path, model_dir: Path, tmp_path: Path) -> None:
    message = _error(
        run("prepare", datasets / "alpaca_en_demo.json", "--model", model_dir, "--format", "csvish")
    )
    assert message.startswith("error: key 'data.format': unknown dataset format 'csvish'\n")
    missing = _error(run("stats", tmp_path / "nope.jsonl", "--model", model_dir))
    assert missing.startswith(f"error: {tmp_path / 'nope.jsonl'}: no such file or folder\n")


SENTENCE = "the quick brown fox jumps over the lazy dog. "
REPEATS = 100_000_000 // len(SENTENCE) + 1


def test_a_100_mb_line_is_cut_not_tokenized_whole(model_dir: Path, tmp_path: Path) -> None:
    # Tokenized whole, this answer took more than 12 GB; only its start is tokenized now (a
    # chat row is cut to max_seq_length; raw text is kept whole, see ft-data's test_raw_text).
    source = tmp_path / "huge.jsonl"
    body = SENTENCE * REPEATS
    with open(source, "w", encoding="utf-8") as out:
        out.write('{"prompt": "Say it.", "completion": "a short row"}\n')
        out.write(json.dumps({"prompt": "Say it.", "completion": body}) + "\n")
    del body
    # The child reports its own high-water mark (VmHWM): ru_maxrss from wait4 would include the
    # pytest process it was forked from, which Linux carries across exec.
    code = (
        "import atexit, sys\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            sys.stderr.write('PEAK_KB ' + line.split()[1] + chr(10))\n"
        "atexit.register(hwm)\n"
        "from ft_cli.dataset_cmd import dataset\ndataset(sys.argv[1:])\n"
    )
    argv = [sys.executable, "-c", code, "prepare", str(source), "--model", str(model_dir)]
    argv += ["--output", str(tmp_path / "huge.h5"), "--json"]
    try:
        with open(tmp_path / "out.json", "wb") as out, open(tmp_path / "err.txt", "wb") as err:
            process = subprocess.Popen(argv, stdout=out, stderr=err)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory
    finally:
        source.unlink()
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / "err.txt").read_text()
    peaks = [
        line.split()[1]
        for line in (tmp_path / "err.txt").read_text().splitlines()
        if line.startswith("PEAK_KB")
    ]
    peak_mb = (
        int(peaks[-1]) / 1024
        if peaks
        else usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    )
    assert peak_mb < 1500, f"peak RSS {peak_mb:.0f} MB"
    report = json.loads((tmp_path / "out.json").read_text())
    assert (report["rows_read"], report["examples"], report["longest"]) == (2, 2, 2048)
    [row] = report["truncated"]["rows"]
    assert row["file"] == str(source) and row["row"] == 2
    assert row["reason"].endswith(" characters cut to max_length 2048")
    assert int(row["reason"].split()[0].replace(",", "")) > len(SENTENCE) * REPEATS


def test_prepare_never_overwrites_an_output_silently(
    datasets: Path, model_dir: Path, tmp_path: Path
) -> None:
    source = datasets / "wikisql" / "valid.jsonl"
    h5 = tmp_path / "v.h5"
    assert run("prepare", source, "--model", model_dir, "-o", h5).exit_code == 0
    before = h5.read_bytes()
    refused = "exists: ft dataset prepare does not overwrite it. Choose another -o path, or add --force to replace it"
    assert _error(run("prepare", source, "--model", model_dir, "-o", h5)) == (
        f"error: {h5} {refused}\n"
    )
    assert h5.read_bytes() == before
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "valid.h5").write_text("someone's file")
    assert _error(run("prepare", source, "--model", model_dir, "-o", folder)) == (
        f"error: {folder / 'valid.h5'} {refused}\n"
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert _error(run("prepare", source, "--model", model_dir, "-o", notes)) == (
        f"error: {notes} exists and is a file, not a folder: -o takes a .h5 file or a folder. "
        "Choose another path, or add --force to replace the file with the prepared dataset\n"
    )
    assert notes.read_text() == "my notes" and (folder / "valid.h5").read_text() == "someone's file"
    report = run_json("prepare", source, "--model", model_dir, "-o", folder, "--force")
    assert report["output"] == str(folder / "valid.h5")
    with PreparedDataset(folder / "valid.h5") as replaced:
        assert len(replaced) == report["examples"]


def test_prepare_of_data_with_no_usable_row_names_the_file(model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text('{"instruction": "a", "output": ""}\n', encoding="utf-8")
    message = _error(run("prepare", source, "--model", model_dir, "--format", "alpaca"))
    assert message.startswith(
        f"error: {source}: no usable rows: its one row was left out (invalid 1); row 1 of "
        "empty.jsonl: key 'output': the field is empty"
    )
