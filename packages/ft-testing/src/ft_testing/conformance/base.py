"""What the conformance tests share: the trainer under test (`ConformanceBase`'s class
attributes), how they run it, the runs several tests compare with, and the checks they repeat."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pytest

from ft_testing.training import JobMaker, event_problems, safetensors_header, tensors_sha256, train
from ft_train_core.protocol import Trainer, TrainJob, TrainResult

# Every trick a resume must restore: dropout (the random state), packing, accumulation (the
# micro-step), warmup and a cosine schedule, evaluations and the best checkpoint, two epochs.
RESUME = {
    "method__dropout": 0.1,
    "data__packing": True,
    "training__batch_size": 2,
    "training__gradient_accumulation_steps": 2,
    "training__lr_scheduler": "cosine",
    "training__warmup_steps": 2,
    "training__epochs": 2,
    "training__eval_every": 3,
}
# An evaluation after every step, none of which can beat the first by the threshold: the first
# is the best, patience 3 ends the run at step 4; a checkpoint every step, the last 2 kept.
EARLY_STOPPING = {
    "training__eval_every": 1,
    "training__save_every": 1,
    "training__keep_last": 2,
    "training__early_stopping_patience": 3,
    "training__early_stopping_threshold": 10.0,
}
# DPO on preference pairs (`prepared_pairs`), with what a resume must restore: dropout, packed
# pairs, accumulation, evaluations; a checkpoint every step, for the kills to land between.
DPO = {
    "method__objective": "dpo",
    "method__dropout": 0.1,
    "data__packing": True,
    "training__batch_size": 2,
    "training__gradient_accumulation_steps": 2,
    "training__max_steps": 6,
    "training__eval_every": 3,
    "training__save_every": 1,
}
# LoRA r=4 on q_proj (64 -> 64) and v_proj (64 -> 32: 2 key/value heads of 16) in 2 layers
LORA_PARAMS = 2 * (4 * (64 + 64) + 4 * (64 + 32))


class Run(NamedTuple):
    job: TrainJob
    events: list[dict[str, Any]]
    result: TrainResult

    @property
    def adapter_sha256(self) -> str:
        assert self.result.adapter_path is not None, self.result
        return tensors_sha256(self.result.adapter_path)


class ConformanceBase:
    """The trainer under test and the plumbing of the conformance tests."""

    trainer: ClassVar[Callable[[], Trainer]]
    """Makes the trainer under test: its class, or any function without arguments."""
    launch_module: ClassVar[str]
    """The module that runs a job file, `python -m <launch_module> job.json`."""
    preload: ClassVar[tuple[str, ...]] = ()
    """Modules to import once in the process the SIGKILLed children fork from (the backend's
    heavy imports); the trainer's own module always is."""

    @classmethod
    def new_trainer(cls) -> Trainer:
        return cls.trainer()

    @classmethod
    def train(cls, job: TrainJob, *, stop_at: int | None = None) -> Run:
        """Run `job` (stopping once step `stop_at` is done), its events checked (`check_run`)."""
        events, result = train(cls.new_trainer(), job, stop_at=stop_at)
        return Run(job, events, result)

    @pytest.fixture(scope="class")
    @classmethod
    def class_jobs(
        cls,
        tmp_path_factory: pytest.TempPathFactory,
        tiny_model_factory: Callable[[str], Path],
        prepared_alpaca: Callable[[str, int], tuple[Path, Path]],
        prepared_pairs: Callable[[str, int], tuple[Path, Path]],
        job_settings: dict[str, Any],
    ) -> JobMaker:
        """`make_job` for runs that several tests compare with."""
        root = tmp_path_factory.mktemp("conformance")
        return JobMaker(root, tiny_model_factory, prepared_alpaca, job_settings, prepared_pairs)

    @pytest.fixture(scope="class")
    @classmethod
    def early_stopped(cls, class_jobs: JobMaker) -> Run:
        """The `EARLY_STOPPING` run, never stopped."""
        return cls.train(class_jobs(run="early", **EARLY_STOPPING))


def assert_same_losses(events: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    """Every step's loss and every evaluation's loss in `events` (one run, or the attempts of
    one) is, bit for bit, the one `reference` (an uninterrupted run) has at that step, and
    together they cover every step and evaluation of `reference`."""

    def values(stream: list[dict[str, Any]]) -> Iterator[tuple[tuple[str, int], float]]:
        for e in stream:
            if e["type"] in ("step", "eval"):
                yield (e["type"], e["step"]), e["loss" if e["type"] == "step" else "eval_loss"]

    expected = dict(values(reference))
    seen = list(values(events))
    differ = [(key, value, expected.get(key)) for key, value in seen if value != expected.get(key)]
    assert not differ, f"(event, step), loss, uninterrupted loss: {differ}"
    assert {key for key, _ in seen} == expected.keys()


def check_attempts(events: list[dict[str, Any]]) -> None:
    """The events of killed attempts (no `end`) conform to the protocol one by one."""
    problems = [p for event in events for p in event_problems(event)]
    assert not problems, problems


def step_seconds(events: list[dict[str, Any]]) -> float:
    steps = [e for e in events if e["type"] == "step"]
    return steps[-1]["elapsed_s"] / len(steps)


def step_tokens(events: list[dict[str, Any]]) -> list[int]:
    return [e["tokens"] for e in events if e["type"] == "step"]


def folder_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def tensor_names(path: Path) -> set[str]:
    return set(safetensors_header(path))


def parameter_count(path: Path) -> int:
    return sum(math.prod(tensor["shape"]) for tensor in safetensors_header(path).values())


def adapter_tensors(folder: Path | None) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    assert folder is not None
    return load_file(str(folder / "adapter_model.safetensors"))
