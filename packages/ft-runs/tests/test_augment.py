"""ft_runs.augment: every method's rows and tags on a tiny random model (its text is gibberish,
so these test the mechanics), the filters on a scripted model, and resuming a torn output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ft_data import DataError
from ft_runs.augment import (
    Augmenter,
    AugmentSettings,
    Source,
    read_done,
    read_sources,
    rejected_file,
    similarity,
)

ROWS = [
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow and blue."},
    {"instruction": "What is the boiling point of water?", "input": "", "output": "100 C."},
    {"instruction": "Write a haiku about rain.", "input": "", "output": "Soft rain on the roof."},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def keys(rows: list[dict[str, Any]]) -> list[tuple[int, str, int]]:
    return [
        (r["augment"]["origin"]["row"], r["augment"]["method"], r["augment"]["variant"])
        for r in rows
    ]


@pytest.fixture(scope="module")
def tiny_generator(tiny_model_factory: Any) -> Any:
    from ft_models.generate import Generator

    return Generator.load(tiny_model_factory("llama"), backend="torch")


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


def test_every_method_writes_tagged_rows_once(
    tiny_generator: Any, alpaca: Path, tmp_path: Path
) -> None:
    settings = AugmentSettings(
        methods=("paraphrase", "backtranslate", "qa", "self-instruct"),
        max_tokens=3,
        seed_examples=2,
        batch_size=3,
        keep_cut=True,  # 3 tokens cut every text
    )
    sources = read_sources(alpaca)[:2]
    augmenter = Augmenter(
        tiny_generator, sources, settings, origin="train.jsonl", model_name="tiny"
    )
    output = tmp_path / "out.jsonl"
    seen: list[tuple[int, int]] = []
    summary = augmenter.run(output, on_progress=lambda done, total: seen.append((done, total)))

    written = lines(output) + lines(rejected_file(output))
    expected = [(row, m, 0) for m in settings.methods for row in (1, 2)]
    assert sorted(keys(written)) == sorted(expected)  # every unit once, kept or dropped
    assert summary.units == 8 and summary.kept == len(lines(output))
    assert summary.kept + sum(summary.dropped.values()) == 8
    assert seen == [(0, 8), (3, 8), (6, 8), (8, 8)]  # batches of 3
    for row in written:
        tag = row["augment"]
        assert tag["origin"]["source"] == "train.jsonl" and tag["model"] == "tiny"
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        if tag["method"] == "backtranslate":
            assert tag["pivot"] == "French"
        if tag["method"] == "self-instruct":
            assert tag["seed_rows"] == [tag["origin"]["row"], 3 - tag["origin"]["row"]]
    for row in lines(rejected_file(output)):
        assert row["reason"]
    # Kept rows of every method (the tiny model writes something for each).
    assert {m for _, m, _ in keys(lines(output))} == set(settings.methods)
    # Done: a second run generates nothing.
    again = Augmenter(tiny_generator, sources, settings, origin="train.jsonl").run(output)
    assert (again.already_done, again.kept, again.dropped) == (8, 0, {})


def test_qa_and_paraphrase_of_raw_text(tiny_generator: Any, tmp_path: Path) -> None:
    text = write_jsonl(tmp_path / "notes.jsonl", [{"text": "The river floods every spring."}])
    sources = read_sources(text)
    assert sources == [Source(1, None, "The river floods every spring.")]
    settings = AugmentSettings(
        methods=("paraphrase", "qa"), max_tokens=3, max_similarity=1.0, keep_cut=True
    )
    outcomes = Augmenter(tiny_generator, sources, settings, origin="notes").preview(5)
    assert [(o.unit.method, sorted(o.record)) for o in outcomes] == [
        ("paraphrase", ["augment", "text"]),
        ("qa", ["augment", "messages"]),
    ]
    with pytest.raises(DataError, match="self-instruct starts from chat rows"):
        Augmenter(tiny_generator, sources, AugmentSettings(methods=("self-instruct",)), origin="x")


class Scripted:
    """A model that answers each prompt by a rule: `echo` gives back the text being rewritten;
    `fixed` always the same words."""

    def __init__(self, mode: str, words: str = "", finish: str = "stop") -> None:
        self.mode, self.words, self.finish = mode, words, finish

    def generate(self, prompt: Any, options: Any = None) -> Any:
        content = prompt[0]["content"]
        text = content.split("Text:\n", 1)[1] if self.mode == "echo" else self.words
        return type("Result", (), {"text": text, "finish_reason": self.finish})()


def test_filters_drop_with_the_reason(alpaca: Path, tmp_path: Path) -> None:
    sources = read_sources(alpaca)
    para = AugmentSettings(methods=("paraphrase",), variants=2)
    echo = Augmenter(Scripted("echo"), sources[:1], para, origin="a").preview(2)
    assert [o.kind for o in echo] == ["too similar", "too similar"]
    assert echo[0].reason == (
        "too similar to its source row 1 (character 5-gram Jaccard 1.00 >= 0.9)"
    )

    fixed = Scripted("fixed", "a completely new sentence about the weather in spring time")
    outcomes = Augmenter(fixed, sources[:2], para, origin="a").preview(4)
    assert [o.kind for o in outcomes] == [
        None,
        "exact duplicate",
        "exact duplicate",
        "exact duplicate",
    ]
    assert outcomes[1].reason == "exact duplicate of the paraphrase variant 0 of row 1"

    evaluation = [
        "user: a completely new sentence about the weather in spring time\n"
        "assistant: a completely new sentence about the weather in spring time"
    ]
    drifted = AugmentSettings(methods=("paraphrase", "qa"), min_similarity=0.2)
    verdicts = Augmenter(fixed, sources[:1], drifted, origin="a").preview(2)
    assert [o.kind for o in verdicts] == ["too different", None]  # qa is new text by design
    assert verdicts[0].reason == (
        "too different from its source row 1 (character 5-gram Jaccard 0.08 < 0.2)"
    )
    cut = Augmenter(Scripted("fixed", "half a", "length"), sources[:1], para, origin="a")
    assert cut.preview(1)[0].reason == (
        "cut: the model reached max_tokens (512) before it finished a text"
    )
    dirty = Augmenter(fixed, sources[:1], para, origin="a", eval_texts=evaluation).preview(1)
    assert dirty[0].kind == "contamination"
    assert dirty[0].reason == "overlaps evaluation row 0 (100% of its 8-grams; contamination)"


def test_back_translation_takes_the_pivots_in_turn(alpaca: Path) -> None:
    settings = AugmentSettings(
        methods=("backtranslate",), variants=3, pivots=("French", "German"), max_similarity=1.0
    )
    prompts: list[str] = []

    class Recording(Scripted):
        def generate(self, prompt: Any, options: Any = None) -> Any:
            prompts.append(prompt[0]["content"].split(",")[0])
            return super().generate(prompt, options)

    outcomes = Augmenter(Recording("echo"), read_sources(alpaca)[:1], settings, origin="a").preview(
        3
    )
    assert [o.record["augment"]["pivot"] for o in outcomes] == ["French", "German", "French"]
    # Each message there and back: user and assistant, pivot then English.
    assert prompts[:4] == [
        "Translate the text below into French",
        "Translate the text below into English",
        "Translate the text below into French",
        "Translate the text below into English",
    ]


def test_similarity_is_character_ngram_jaccard() -> None:
    assert similarity("Hello world", "hello   WORLD") == 1.0
    assert similarity("abcdef", "abcdeg", 5) == 1 / 3  # {abcde, bcdef} vs {abcde, bcdeg}
    assert similarity("abc", "xyz", 5) == 0.0


def test_a_torn_last_line_is_cut_and_the_run_goes_on(alpaca: Path, tmp_path: Path) -> None:
    fixed = Scripted("fixed", "x")  # short: every row after the first is a duplicate
    settings = AugmentSettings(methods=("paraphrase",), variants=2, batch_size=1)
    sources = read_sources(alpaca)
    output = tmp_path / "out.jsonl"
    first = Augmenter(fixed, sources, settings, origin="a").run(output, limit=2)
    assert first.kept + sum(first.dropped.values()) == 2
    with rejected_file(output).open("a") as handle:
        handle.write('{"messages": [{"role": "us')  # killed mid-write
    rest = Augmenter(fixed, sources, settings, origin="a").run(output)
    assert rest.already_done == 2
    written = read_done(output) + read_done(rejected_file(output))
    assert sorted(keys(written)) == [(r, "paraphrase", v) for r in (1, 2, 3) for v in (0, 1)]


def test_output_that_is_not_augmentation_output_is_refused(alpaca: Path, tmp_path: Path) -> None:
    output = write_jsonl(tmp_path / "out.jsonl", ROWS)
    augmenter = Augmenter(
        Scripted("fixed", "x"), read_sources(alpaca), AugmentSettings(), origin="a"
    )
    with pytest.raises(DataError, match="row has no 'augment' tag") as error:
        augmenter.run(output)
    assert (error.value.file, error.value.line) == (str(output), 1)
