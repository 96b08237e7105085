"""Shared fixtures: a few dozen short Alpaca rows prepared with a tiny model's tokenizer, and
`make_job`, which builds a TrainJob from setting overrides."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ft_config.structure import structure_config
from ft_data.prepare import PrepareOptions, prepare_dataset
from ft_runs.protocols import TrainJob

# One thread: CPU results then depend on nothing but the inputs, and the 2 cores stay shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))  # train_helpers.py

from train_helpers import MAX_LEN, settings


def _datasets() -> Path:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets" / "alpaca_en_demo.json"
        if candidate.is_file():
            return candidate
    env = os.environ.get("FT_TEST_DATASETS")
    if env and (Path(env) / "alpaca_en_demo.json").is_file():
        return Path(env) / "alpaca_en_demo.json"
    pytest.skip("shared/datasets/alpaca_en_demo.json not found; set FT_TEST_DATASETS")


@pytest.fixture(scope="session")
def short_rows() -> list[dict[str, str]]:
    """The 40 shortest Alpaca rows (instruction + output under 160 characters), in file order."""
    rows = json.loads(_datasets().read_text(encoding="utf-8"))
    short = [
        r for r in rows if not r.get("input") and len(r["instruction"]) + len(r["output"]) < 160
    ]
    return short[:40]


@pytest.fixture(scope="session")
def prepared(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_factory: Callable[[str], Path],
    short_rows: list[dict[str, str]],
) -> Callable[[str], tuple[Path, Path]]:
    """`prepared(arch) -> (train.h5, validation.h5)`: 32 training and 8 validation rows."""
    root = tmp_path_factory.mktemp("prepared")
    built: dict[str, tuple[Path, Path]] = {}

    def build(arch: str) -> tuple[Path, Path]:
        if arch not in built:
            model = tiny_model_factory(arch)
            paths = []
            for split, rows in (("train", short_rows[:32]), ("validation", short_rows[32:40])):
                source = root / f"{arch}-{split}.jsonl"
                source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                output = root / f"{arch}-{split}.h5"
                prepare_dataset(
                    source,
                    model,
                    output,
                    PrepareOptions(max_length=MAX_LEN, on_too_long="truncate"),
                )
                paths.append(output)
            built[arch] = (paths[0], paths[1])
        return built[arch]

    return build


@pytest.fixture
def make_job(
    tmp_path: Path,
    tiny_model_factory: Callable[[str], Path],
    prepared: Callable[[str], tuple[Path, Path]],
) -> Callable[..., TrainJob]:
    """`make_job(arch="llama", run="run", validation=True, resume_from=None, **overrides)`."""

    def make(
        arch: str = "llama",
        run: str = "run",
        validation: bool = True,
        resume_from: Path | None = None,
        **overrides: Any,
    ) -> TrainJob:
        config, problems = structure_config(settings(**overrides))
        assert not problems, problems
        train, val = prepared(arch)
        run_dir = tmp_path / run
        run_dir.mkdir(exist_ok=True)
        return TrainJob(
            config=config,
            model_path=tiny_model_factory(arch),
            train_data=train,
            validation_data=val if validation else None,
            run_dir=run_dir,
            resume_from=resume_from,
        )

    return make
