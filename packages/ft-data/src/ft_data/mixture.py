"""Mixtures: several sources prepared each on its own (its own format, detected), then mixed
into one prepared dataset in the proportions asked, seeded.

Each source takes one of:

- ``rows: N``: N of its examples (a seeded sample; past its size, every example repeated as
  often as it fits and a sample for the rest);
- ``ratio: r``: r times its examples (0.5: half of them; 2: each twice);
- ``weight: w``: a share of the weighted part of the mix, w over the sum of the weights. The
  weighted part is as large as it can be without repeating an example of any weighted
  source: the source that runs out first sets its size;
- none of them: all its examples, once.

The mix holds the chosen examples of each source in order (trainers shuffle). Its report
(``PrepareReport.sources``) says per source what was available, what was taken and its
share of the mix's examples and tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ft_data.errors import DataError
from ft_data.hdf5 import PreparedDataset, PreparedWriter, read_attrs
from ft_data.prepare import PrepareOptions, PrepareReport, PrepareResult, prepare_dataset
from ft_data.tokenizer import ModelTokenizer, load_tokenizer

MIXTURE_VERSION = 1
_READ_TOKENS = 1 << 22  # tokens read from a source at a time while copying


@dataclass(frozen=True)
class MixSource:
    """One source of a mixture: ``path`` (anything ``prepare_dataset`` reads) and at most one
    of ``weight``, ``rows`` and ``ratio``; ``config``, ``split`` and ``revision`` for a
    Hugging Face Hub dataset."""

    path: str
    weight: float | None = None
    rows: int | None = None
    ratio: float | None = None
    config: str | None = None
    split: str | None = None
    revision: str | None = None

    def amount(self) -> str:
        """How much of it the mix takes, in words."""
        if self.rows is not None:
            return f"rows {self.rows}"
        if self.ratio is not None:
            return f"ratio {self.ratio:g}"
        if self.weight is not None:
            return f"weight {self.weight:g}"
        return "all"


@dataclass(frozen=True)
class Mixture:
    """Sources mixed in the proportions each asks for; ``seed`` picks the examples."""

    sources: tuple[MixSource, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise DataError("a mixture needs at least one source", key="data.train")
        for index, source in enumerate(self.sources):
            given = [
                name for name in ("weight", "rows", "ratio") if getattr(source, name) is not None
            ]
            where = f"data.train[{index}]"
            if len(given) > 1:
                raise DataError(
                    f"{source.path}: give one of weight, rows and ratio, not {' and '.join(given)}",
                    key=where,
                )
            if source.rows is not None and source.rows < 1:
                raise DataError(f"rows must be at least 1, got {source.rows}", key=f"{where}.rows")
            for name in ("weight", "ratio"):
                value = getattr(source, name)
                if value is not None and not value > 0:
                    raise DataError(
                        f"{name} must be more than 0, got {value}", key=f"{where}.{name}"
                    )

    def __str__(self) -> str:
        return " + ".join(f"{source.path} ({source.amount()})" for source in self.sources)


def plan_mixture(
    available: list[int], sources: tuple[MixSource, ...], seed: int
) -> list[np.ndarray]:
    """The example indices (sorted, repeats allowed) taken from each source, which has
    ``available[i]`` examples (see the module docstring)."""
    counts = [0] * len(sources)
    weighted = [i for i, source in enumerate(sources) if source.weight is not None]
    if weighted:
        total_weight = sum(sources[i].weight or 0.0 for i in weighted)
        size = min(available[i] * total_weight / (sources[i].weight or 1.0) for i in weighted)
        for i in weighted:
            counts[i] = min(available[i], round(size * (sources[i].weight or 0.0) / total_weight))
    for i, source in enumerate(sources):
        if source.rows is not None:
            counts[i] = source.rows
        elif source.ratio is not None:
            counts[i] = round(available[i] * source.ratio)
        elif source.weight is None:
            counts[i] = available[i]
    rng = np.random.default_rng(seed)
    plans = []
    for index, (count, size) in enumerate(zip(counts, available, strict=True)):
        if count and not size:
            raise DataError(
                f"{sources[index].path} has no examples to take {count} from",
                key=f"data.train[{index}]",
            )
        whole, rest = divmod(count, size) if size else (0, 0)
        picked = np.concatenate(
            [np.tile(np.arange(size), whole), rng.choice(size, size=rest, replace=False)]
        ).astype(np.int64)
        plans.append(np.sort(picked))
    return plans


def prepare_mixture(
    mixture: Mixture,
    tokenizer: ModelTokenizer | str | Path,
    output: str | Path | Callable[[str], Path],
    options: PrepareOptions | None = None,
    *,
    rebuild: bool = False,
    progress: Callable[[int], None] | None = None,
    url_token: str | None = None,
) -> PrepareResult:
    """Prepare each source of ``mixture`` (or reuse it), then write the mix to ``output`` (a
    path, or a function of the cache key). Reuses the mix when its key (the sources' keys,
    their amounts and the seed) matches, unless ``rebuild``."""
    options = options or PrepareOptions()
    tok = tokenizer if isinstance(tokenizer, ModelTokenizer) else load_tokenizer(tokenizer)
    parts: list[PrepareResult] = []
    for index, source in enumerate(mixture.sources):
        part_output = output if callable(output) else _part_path(Path(output), index)
        parts.append(
            prepare_dataset(
                source_of(source),
                tok,
                part_output,
                options,
                rebuild=rebuild,
                progress=progress,
                url_token=url_token,
            )
        )
    keys = [str(read_attrs(part.path)["cache_key"]) for part in parts]  # type: ignore[index]
    spec = {
        "mixture": MIXTURE_VERSION,
        "parts": keys,
        "sources": [asdict(source) for source in mixture.sources],
        "seed": mixture.seed,
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    target = Path(output(key) if callable(output) else output)
    if not rebuild and (old := read_attrs(target)) is not None and old.get("cache_key") == key:
        return PrepareResult(target, True, PrepareReport.from_dict(old["stats"]))
    datasets = [PreparedDataset(part.path) for part in parts]
    try:
        if any(data.labels() is not None for data in datasets):
            raise DataError(
                "a mixture of labelled (classification) data is not supported",
                key="data.train",
                hint="prepare one labelled source, or combine the files first",
            )
        plans = plan_mixture([len(data) for data in datasets], mixture.sources, mixture.seed)
        report = _mixed_report(mixture, parts)
        attrs = {
            **{k: v for k, v in datasets[0].attrs.items() if k != "stats"},
            "cache_key": key,
            "source_hash": key,
            "format": "mixture",
        }
        with PreparedWriter(target, attrs) as writer:
            for index, (data, plan) in enumerate(zip(datasets, plans, strict=True)):
                taken, trained = _copy(data, plan, writer)
                report.sources[index].update(
                    taken=len(plan),
                    tokens=taken,
                    distinct=len(np.unique(plan)),
                )
                report.examples += len(plan)
                report.tokens += taken
                report.trained_tokens += trained
            report.longest = max((p.report.longest for p in parts), default=0)
            for entry in report.sources:
                entry["share"] = (
                    round(entry["taken"] / report.examples, 4) if report.examples else 0
                )
                entry["token_share"] = (
                    round(entry["tokens"] / report.tokens, 4) if report.tokens else 0
                )
            writer.attrs["stats"] = report.to_dict()
    finally:
        for data in datasets:
            data.close()
    return PrepareResult(target, False, report)


def source_of(source: MixSource) -> Any:
    """What ``prepare_dataset`` is given for one source: its path, or the Hub dataset with
    its config, split and revision."""
    if source.config is None and source.split is None and source.revision is None:
        return source.path
    from ft_data.hub import HubDataset

    return HubDataset.parse(
        source.path, config=source.config, split=source.split, revision=source.revision
    )


def _part_path(output: Path, index: int) -> Path:
    return output.with_name(f"{output.stem}.source{index + 1}{output.suffix or '.h5'}")


def _mixed_report(mixture: Mixture, parts: list[PrepareResult]) -> PrepareReport:
    kinds = {part.report.kind for part in parts}
    if len(kinds) > 1:
        raise DataError(
            f"the sources of a mixture must be of one kind, found {', '.join(sorted(kinds))}",
            key="data.train",
            hint="mix chat data with chat data, raw text with raw text, pairs with pairs",
        )
    report = PrepareReport(
        "mixture",
        f"mixture of {len(parts)} sources (seed {mixture.seed})",
        parts[0].report.template,
        kind=kinds.pop(),
    )
    report.rows_read = sum(part.report.rows_read for part in parts)
    for part in parts:
        for kind, count in part.report.counts.items():
            report.counts[kind] = report.counts.get(kind, 0) + count
        report.issues += part.report.issues[:100]
    report.sources = [
        {
            "source": source.path,
            "amount": source.amount(),
            "detected": part.report.format_reason,
            "rows_read": part.report.rows_read,
            "available": part.report.examples,
            "prepared": str(part.path),
        }
        for source, part in zip(mixture.sources, parts, strict=True)
    ]
    return report


def _copy(data: PreparedDataset, plan: np.ndarray, writer: PreparedWriter) -> tuple[int, int]:
    """Append the examples ``plan`` names (sorted) to ``writer``, reading the source a few
    million tokens at a time; returns the tokens written and how many of them are trained."""
    offsets, written, trained, start = data.offsets, 0, 0, 0
    pairs = data.has_rejected
    while start < len(plan):
        first = int(plan[start])
        stop = max(
            start + 1, int(np.searchsorted(offsets[plan + 1], offsets[first] + _READ_TOKENS))
        )
        last = int(plan[stop - 1])
        base = int(offsets[first])
        tokens, mask = data.read_tokens(base, int(offsets[last + 1]))
        for example in plan[start:stop].tolist():
            a, b = int(offsets[example]) - base, int(offsets[example + 1]) - base
            writer.add(tokens[a:b], mask[a:b], rejected=data.rejected(example) if pairs else None)
            written += b - a
            trained += int(mask[a:b].sum())
        start = stop
    return written, trained
