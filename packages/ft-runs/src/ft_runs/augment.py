"""Data augmentation with a local model: `ft dataset augment`.

Four methods, each a few prompts to a model loaded through ft-models' generation API
(`ft_models.generate.Generator`, any model ft can load):

- ``paraphrase``: every user and assistant message said again in other words (N variants).
- ``backtranslate``: every user and assistant message translated into a pivot language and
  back (variant i uses pivot i modulo the pivots given).
- ``qa``: a question the row's text answers, then its answer (synthetic Q/A from raw text;
  works on chat rows too, from their text).
- ``self-instruct``: a new instruction written after a few seed rows (the row itself and
  others drawn with the unit's seed), then the model's answer to it.

One *unit* is (source row, method, variant): it gives at most one output row. Units are
generated a batch at a time; each batch is filtered and appended to the output JSONL (kept
rows) and to ``<output>.rejected.jsonl`` (dropped rows with the reason), flushed and fsynced.
A unit found in either file is done, so a run killed at any point resumes where it stopped
and no unit is written twice; a torn last line (the kill came mid-write) is cut off first.

Filters, in order: a text cut at max_tokens (unless keep_cut); empty output; too similar to its
source (character n-gram Jaccard of the two rows' texts at or above ``max_similarity``: a
paraphrase that changed nothing) or, for paraphrases and back-translations, too different
(below ``min_similarity``, off by default: it drifted); overlap with evaluation data (ft-data's
contamination rule, `ft_data.contamination`); an exact or near duplicate (ft-data's dedup:
`ft_data.quality`, `ft_data.minhash`) of a source row or an earlier kept output row.

Each unit's sampling seed is derived from (seed, row, method, variant), so a unit generates
the same text whether it runs in the first try or after a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import attrs

from ft_data import DataError, RowProblem

METHODS = ("paraphrase", "backtranslate", "qa", "self-instruct")
AUGMENT_KEY = "augment"
"""The key of an output row that says where it came from (origin, method, variant, model)."""

_PARAPHRASE = (
    "Paraphrase the text below: say the same thing in different words, in the same language, "
    "keeping every fact, name, number and piece of code. Reply with the paraphrase only.\n\n"
    "Text:\n{text}"
)
_TRANSLATE = (
    "Translate the text below into {language}, keeping every fact, name, number and piece of "
    "code. Reply with the translation only.\n\nText:\n{text}"
)
_QUESTION = (
    "Here is a text:\n\n{text}\n\nWrite one question that this text answers. "
    "Reply with the question only."
)
_ANSWER = (
    "Answer the question from the text.\n\nText:\n{text}\n\nQuestion: {question}\n\n"
    "Reply with the answer only."
)
_INSTRUCT = (
    "Here are examples of instructions that users gave an assistant:\n\n{examples}\n\n"
    "Write one new instruction of the same kind, on a different subject, unlike these. "
    "Reply with the instruction only."
)


class TextModel(Protocol):
    """What augmentation needs of a model: `ft_models.generate.Generator` is one."""

    def generate(self, prompt: Any, options: Any = None) -> Any: ...


@attrs.frozen
class AugmentSettings:
    """How to augment; the CLI's options, one for one."""

    methods: tuple[str, ...] = ("paraphrase",)
    variants: int = 1
    """Output units per source row and method."""
    pivots: tuple[str, ...] = ("French",)
    """Back-translation's pivot languages; variant i goes through pivots[i % len]."""
    language: str = "English"
    """The language of the data (what back-translation translates back into)."""
    seed_examples: int = 3
    """Seed rows shown to the model per self-instruct prompt."""
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    batch_size: int = 8
    """Units generated before they are filtered and appended (and fsynced) together."""
    max_similarity: float = 0.9
    """A row whose character n-gram Jaccard similarity to its source is at or above this is
    dropped (1.0 drops only rows equal to their source in n-grams)."""
    min_similarity: float = 0.0
    """A paraphrase or back-translation less similar than this to its source is dropped (it
    drifted from the meaning, or the model wrote about the task instead); 0 is off."""
    char_ngram: int = 5
    near_threshold: float = 0.85
    """ft-data's near-duplicate threshold (MinHash Jaccard of word 5-grams)."""
    keep_cut: bool = False
    """Keep rows with a text the model did not finish (it reached max_tokens); by default they
    are dropped, since a paraphrase cut short loses the end of its answer."""

    def __attrs_post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise DataError(
                f"unknown augmentation method {', '.join(unknown) or '(none given)'}",
                hint=f"methods: {', '.join(METHODS)}",
            )
        if self.variants < 1 or self.batch_size < 1 or self.seed_examples < 1:
            raise DataError("variants, batch size and seed examples must be at least 1")
        if not self.pivots:
            raise DataError("back-translation needs at least one pivot language")


@dataclass(frozen=True)
class Source:
    """One source row: its messages (OpenAI-shaped dicts), or its text for a text row."""

    row: int
    messages: tuple[dict[str, Any], ...] | None
    text: str

    @property
    def is_text(self) -> bool:
        return self.messages is None


@dataclass(frozen=True)
class Unit:
    row: int
    method: str
    variant: int

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.row, self.method, self.variant)


@dataclass
class Outcome:
    """A generated row and, when it is dropped, why."""

    unit: Unit
    record: dict[str, Any]
    text: str
    reason: str | None = None
    kind: str | None = None
    """The filter that dropped it: cut, empty, too similar, too different, contamination, exact duplicate,
    near duplicate."""

    def drop(self, kind: str, reason: str) -> None:
        self.kind, self.reason = kind, reason


@dataclass
class AugmentSummary:
    units: int = 0
    """Units of the whole plan."""
    already_done: int = 0
    """Units found in the output files when the run started (resumed)."""
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    output: str = ""
    rejected: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "already_done": self.already_done,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "output": self.output,
            "rejected": self.rejected,
        }


# sources ----------------------------------------------------------------------------------------


def read_sources(source: str | Path, *, format: str | None = None) -> list[Source]:
    """The rows of `source` (any file, folder or glob ft-data reads), as chat messages or raw
    text, through ft-data's readers and format detection (or the named `format`)."""
    from ft_data.formats import detect_format, get_format
    from ft_data.quality import conversation_text
    from ft_data.readers import read_rows

    rows = list(read_rows(source))
    fmt = (
        get_format(format)
        if format
        else detect_format((row for _, row in rows), where=str(source)).format
    )
    sources = []
    for number, row in rows:
        try:
            conversation = fmt.to_conversation(row)
        except RowProblem as problem:
            raise problem.at(
                file=str(source), row=number, hint="fix the row, or name the format"
            ) from problem
        if getattr(fmt, "kind", "chat") == "text":
            text = conversation.messages[0].content
            sources.append(Source(number, None, text))
            continue
        messages = tuple(
            {
                "role": m.role,
                "content": m.content,
                **({"tool_calls": m.tool_calls} if m.tool_calls else {}),
            }
            for m in conversation.messages
        )
        sources.append(Source(number, messages, conversation_text(conversation)))
    if not sources:
        raise DataError(f"{source} holds no rows", hint="check the file is not empty")
    return sources


def row_text(record: dict[str, Any]) -> str:
    """The text of an output row as the dedup and similarity checks read it (for a chat row,
    ft-data's `role: content` lines)."""
    if "text" in record:
        return str(record["text"])
    return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])


def char_ngrams(text: str, n: int) -> set[str]:
    text = " ".join(text.casefold().split())
    if len(text) <= n:
        return {text}
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def similarity(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of the two texts' character n-gram sets (case and whitespace runs
    ignored): 1.0 for the same text, near 0 for unrelated ones."""
    left, right = char_ngrams(a, n), char_ngrams(b, n)
    union = len(left | right)
    return len(left & right) / union if union else 1.0


# the plan ---------------------------------------------------------------------------------------


def plan(sources: Sequence[Source], settings: AugmentSettings) -> list[Unit]:
    """Every unit, method by method, row by row, variant by variant. Self-instruct needs chat
    rows to start from and skips text rows."""
    units = []
    for method in settings.methods:
        for source in sources:
            if method == "self-instruct" and source.is_text:
                continue
            units += [Unit(source.row, method, v) for v in range(settings.variants)]
    if not units:
        raise DataError(
            "nothing to augment: self-instruct starts from chat rows and these are raw text",
            hint="use qa, paraphrase or backtranslate on raw text",
        )
    return units


def unit_seed(seed: int, unit: Unit) -> int:
    digest = hashlib.blake2b(
        f"{seed}/{unit.row}/{unit.method}/{unit.variant}".encode(), digest_size=4
    ).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


# generation -------------------------------------------------------------------------------------


class Augmenter:
    """Generates, filters and writes the units of one augmentation (see the module docs)."""

    def __init__(
        self,
        model: TextModel,
        sources: Sequence[Source],
        settings: AugmentSettings,
        *,
        origin: str,
        model_name: str = "",
        eval_texts: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.sources = list(sources)
        self.by_row = {s.row: s for s in self.sources}
        self.chat_rows = [s for s in self.sources if not s.is_text]
        self.settings = settings
        self.origin = origin
        self.model_name = model_name
        self.eval_texts = list(eval_texts)
        self.units = plan(self.sources, settings)
        self._dedup = _Dedup(settings.near_threshold, [s.text for s in self.sources])
        self._cut = False

    # -- one unit ---------------------------------------------------------------------------

    def _ask(self, prompt: str, seed: int) -> str:
        from ft_models.generate import GenerationOptions

        options = GenerationOptions(
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            seed=seed,
        )
        result = self.model.generate([{"role": "user", "content": prompt}], options)
        if getattr(result, "finish_reason", "stop") == "length":
            self._cut = True
        return str(result.text).strip()

    def generate(self, unit: Unit) -> Outcome:
        """The unit's row (not yet filtered)."""
        source = self.by_row[unit.row]
        seed = unit_seed(self.settings.seed, unit)
        self._cut = False
        tag: dict[str, Any] = {
            "origin": {"source": self.origin, "row": unit.row},
            "method": unit.method,
            "variant": unit.variant,
            "model": self.model_name,
        }
        calls = iter(range(seed, seed + 1_000_000))
        record: dict[str, Any]
        if unit.method in ("paraphrase", "backtranslate"):
            pivot = self.settings.pivots[unit.variant % len(self.settings.pivots)]
            if unit.method == "backtranslate":
                tag["pivot"] = pivot

            def rewrite(text: str) -> str:
                if unit.method == "paraphrase":
                    return self._ask(_PARAPHRASE.format(text=text), next(calls))
                there = self._ask(_TRANSLATE.format(language=pivot, text=text), next(calls))
                language = self.settings.language
                return self._ask(_TRANSLATE.format(language=language, text=there), next(calls))

            if source.messages is None:
                record = {"text": rewrite(source.text)}
            else:
                record = {
                    "messages": [
                        {**m, "content": rewrite(m["content"])}
                        if m["role"] in ("user", "assistant") and m["content"].strip()
                        else dict(m)
                        for m in source.messages
                    ]
                }
        elif unit.method == "qa":
            question = self._ask(_QUESTION.format(text=source.text), next(calls))
            answer = (
                self._ask(_ANSWER.format(text=source.text, question=question), next(calls))
                if question
                else ""
            )
            record = {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        else:  # self-instruct
            others = [s for s in self.chat_rows if s.row != unit.row]
            picked = random.Random(seed).sample(
                others, min(len(others), self.settings.seed_examples - 1)
            )
            seeds = [source, *picked]
            tag["seed_rows"] = [s.row for s in seeds]
            examples = "\n".join(
                f"{i}. {_first_user(s)}" for i, s in enumerate(seeds, 1) if _first_user(s)
            )
            instruction = self._ask(_INSTRUCT.format(examples=examples), next(calls))
            answer = self._ask(instruction, next(calls)) if instruction else ""
            record = {
                "messages": [
                    {"role": "user", "content": instruction},
                    {"role": "assistant", "content": answer},
                ]
            }
        record[AUGMENT_KEY] = tag
        outcome = Outcome(unit, record, row_text(record))
        if self._cut and not self.settings.keep_cut:
            outcome.drop(
                "cut",
                f"cut: the model reached max_tokens ({self.settings.max_tokens}) before it "
                "finished a text",
            )
        return outcome

    # -- filters ----------------------------------------------------------------------------

    def filter(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Set each outcome's `reason` when a filter drops it; kept ones join the dedup index."""
        for outcome in outcomes:
            if outcome.reason is not None:
                continue
            record = outcome.record
            contents = (
                [record["text"]]
                if "text" in record
                else [m["content"] for m in record["messages"] if m["role"] != "system"]
            )
            if not all(c.strip() for c in contents):
                outcome.drop("empty", "empty: the model wrote nothing")
                continue
            source = self.by_row[outcome.unit.row]
            share = similarity(outcome.text, source.text, self.settings.char_ngram)
            if share >= self.settings.max_similarity:
                outcome.drop(
                    "too similar",
                    f"too similar to its source row {source.row} "
                    f"(character {self.settings.char_ngram}-gram Jaccard {share:.2f} >= "
                    f"{self.settings.max_similarity})",
                )
            elif (
                outcome.unit.method in ("paraphrase", "backtranslate")
                and share < self.settings.min_similarity
            ):
                outcome.drop(
                    "too different",
                    f"too different from its source row {source.row} "
                    f"(character {self.settings.char_ngram}-gram Jaccard {share:.2f} < "
                    f"{self.settings.min_similarity})",
                )
        if self.eval_texts:
            from ft_data.contamination import find_contamination

            live = [o for o in outcomes if o.reason is None]
            report = find_contamination([o.text for o in live], self.eval_texts)
            for overlap in report.overlaps:
                live[overlap.train_row].drop(
                    "contamination",
                    f"overlaps evaluation row {overlap.test_row} ({overlap.share:.0%} of its "
                    f"{report.ngram}-grams; contamination)",
                )
        live = [o for o in outcomes if o.reason is None]
        found = self._dedup.add([o.text for o in live], [_label(o.unit) for o in live])
        for outcome, verdict in zip(live, found, strict=True):
            if verdict is not None:
                outcome.drop(*verdict)
        return outcomes

    # -- runs -------------------------------------------------------------------------------

    def preview(self, count: int) -> list[Outcome]:
        """The first `count` units generated and filtered, written nowhere (the dedup index is
        left as it was)."""
        saved = self._dedup
        self._dedup = _Dedup(self.settings.near_threshold, [s.text for s in self.sources])
        try:
            return self.filter([self.generate(u) for u in self.units[:count]])
        finally:
            self._dedup = saved

    def run(
        self,
        output: Path,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        limit: int | None = None,
    ) -> AugmentSummary:
        """Generate every unit not yet in `output` (or its rejected file), a batch at a time,
        appending each batch once filtered. `limit` stops after that many new units."""
        output = Path(output)
        rejected_path = rejected_file(output)
        kept_rows = read_done(output)
        rejected_rows = read_done(rejected_path)
        done = {key_of(r, output) for r in kept_rows} | {
            key_of(r, rejected_path) for r in rejected_rows
        }
        # Earlier kept rows join the index in file order, as they did when first written.
        self._dedup.add(
            [row_text(r) for r in kept_rows],
            [_label(Unit(*key_of(r, output))) for r in kept_rows],
        )
        todo = [u for u in self.units if u.key not in done]
        if limit is not None:
            todo = todo[:limit]
        summary = AugmentSummary(
            units=len(self.units),
            already_done=len(self.units) - len([u for u in self.units if u.key not in done]),
            output=str(output),
            rejected=str(rejected_path),
        )
        progress = summary.already_done
        if on_progress:
            on_progress(progress, len(self.units))
        output.parent.mkdir(parents=True, exist_ok=True)
        with (
            output.open("a", encoding="utf-8") as kept,
            rejected_path.open("a", encoding="utf-8") as dropped,
        ):
            for batch in _chunks(todo, self.settings.batch_size):
                outcomes = self.filter([self.generate(u) for u in batch])
                for outcome in outcomes:
                    if outcome.reason is None:
                        kept.write(json.dumps(outcome.record, ensure_ascii=False) + "\n")
                        summary.kept += 1
                    else:
                        row = {**outcome.record, "reason": outcome.reason}
                        dropped.write(json.dumps(row, ensure_ascii=False) + "\n")
                        kind = outcome.kind or "dropped"
                        summary.dropped[kind] = summary.dropped.get(kind, 0) + 1
                for handle in (kept, dropped):
                    handle.flush()
                    os.fsync(handle.fileno())
                progress += len(batch)
                if on_progress:
                    on_progress(progress, len(self.units))
        return summary


def _first_user(source: Source) -> str:
    for message in source.messages or ():
        if message["role"] == "user" and message["content"].strip():
            return " ".join(message["content"].split())
    return ""


def _chunks(items: Sequence[Unit], size: int) -> Iterator[Sequence[Unit]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _label(unit: Unit) -> str:
    return f"the {unit.method} variant {unit.variant} of row {unit.row}"


class _Dedup:
    """ft-data's duplicate rules, row by row: exact (the normalized BLAKE2b digest of
    `ft_data.quality`) and near (MinHash LSH over word 5-grams, `ft_data.minhash`), against
    the source rows and every kept output row."""

    def __init__(self, threshold: float, source_texts: Iterable[str]) -> None:
        from ft_data.minhash import MinHasher, NearDuplicateIndex

        self.hasher = MinHasher(64, 0)
        self.index = NearDuplicateIndex(threshold=threshold, num_perm=64)
        self.threshold = threshold
        self.digests: dict[bytes, str] = {}
        self.labels: list[str] = []  # per row of the near-duplicate index
        texts = list(source_texts)
        self._add(texts, [f"source row {i}" for i in range(len(texts))], check=False)

    def add(self, texts: list[str], labels: list[str]) -> list[tuple[str, str] | None]:
        """Per text: None when it is kept (and indexed), else (kind, why) it is a duplicate."""
        return self._add(texts, labels, check=True)

    def _add(
        self, texts: list[str], labels: list[str], *, check: bool
    ) -> list[tuple[str, str] | None]:
        from ft_data.ngrams import word_ngrams
        from ft_data.quality import normalized_digest

        if not texts:
            return []
        verdicts: list[tuple[str, str] | None] = [None] * len(texts)
        for i, text in enumerate(texts):
            digest = normalized_digest(text)
            if check and digest in self.digests:
                verdicts[i] = ("exact duplicate", f"exact duplicate of {self.digests[digest]}")
            else:
                self.digests.setdefault(digest, labels[i])
        signatures = self.hasher.signatures(word_ngrams(texts, 5), len(texts))
        of, share = self.index.add(signatures)
        self.labels += labels
        for i in range(len(texts)):
            if check and verdicts[i] is None and of[i] >= 0:
                verdicts[i] = (
                    "near duplicate",
                    f"near duplicate of {self.labels[of[i]]} "
                    f"(similarity {share[i]:.2f} >= {self.threshold})",
                )
        return verdicts


# files ------------------------------------------------------------------------------------------


def rejected_file(output: Path) -> Path:
    """Where the dropped rows of `output` go: `out.jsonl` -> `out.rejected.jsonl`."""
    return output.with_name(output.stem + ".rejected" + (output.suffix or ".jsonl"))


def read_done(path: Path) -> list[dict[str, Any]]:
    """The rows already in an output file; a torn last line (a run killed mid-write) is cut
    off the file first. A bad line elsewhere is an error naming it."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"not JSON ({error.msg})",
                file=str(path),
                line=number,
                hint="this file is an augmentation's output: fix or delete the line, "
                "or write to a new file",
            ) from None
        rows.append(row)
        key_of(row, path, number)
    return rows


def key_of(row: dict[str, Any], path: Path, line: int | None = None) -> tuple[int, str, int]:
    tag = row.get(AUGMENT_KEY) if isinstance(row, dict) else None
    try:
        return (int(tag["origin"]["row"]), str(tag["method"]), int(tag["variant"]))
    except (TypeError, KeyError, ValueError):
        raise DataError(
            f"row has no {AUGMENT_KEY!r} tag (origin row, method, variant)",
            file=str(path),
            line=line,
            key=AUGMENT_KEY,
            hint="write augmentation output to a file of its own (not the source data)",
        ) from None


def read_texts(source: str | Path) -> list[str]:
    """The rows of evaluation data as the contamination check reads them."""
    return [s.text for s in read_sources(source)]
