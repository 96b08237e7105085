"""The backend-free pieces both trainers share: the schedule, the trainer state and
fingerprint, and job files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest

from ft_config.structure import structure_config, unstructure_config
from ft_data.hdf5 import PreparedWriter
from ft_models.checkpoint import step_folder, write_checkpoint
from ft_train_core import jobs, schedule, state
from ft_train_core.protocol import TrainResult


def config(**training):
    spec = {"model": {"name": "m"}, "data": {"train": "t.jsonl"}, "training": training}
    made, problems = structure_config(spec)
    assert made is not None and not problems, problems
    return made


def test_importing_the_core_imports_no_backend() -> None:
    code = (
        "import sys, ft_train_core.protocol, ft_train_core.plan, ft_train_core.jobs\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'mlx', 'transformers', 'peft'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lr_factor_warmup_then_schedules() -> None:
    assert [schedule.lr_factor(s, schedule="constant", warmup=3, total=10) for s in range(5)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
    ]
    assert schedule.lr_factor(3, schedule="linear", warmup=3, total=13) == 1.0
    assert schedule.lr_factor(8, schedule="linear", warmup=3, total=13) == 0.5
    assert schedule.lr_factor(13, schedule="linear", warmup=3, total=13) == 0.0
    assert schedule.lr_factor(8, schedule="cosine", warmup=3, total=13) == pytest.approx(0.5)
    assert schedule.lr_factor(13, schedule="cosine", warmup=3, total=13) == 0.0
    with pytest.raises(ValueError, match="unknown lr_scheduler 'step': constant, linear or cosine"):
        schedule.lr_factor(5, schedule="step", warmup=0, total=10)


def test_warmup_steps_from_ratio_or_count() -> None:
    assert schedule.warmup_steps(config(warmup_ratio=0.1).training, 21) == 3  # rounded up
    assert schedule.warmup_steps(config(warmup_steps=5, warmup_ratio=0.1).training, 21) == 5


@attrs.define
class EvenBatches:
    """The part of ft_data.batches.Batches `plan` uses: `per_epoch` batches in every epoch."""

    per_epoch: int

    def batches_in_epoch(self, epoch: int) -> int:
        return self.per_epoch

    def steps(self, epochs: int) -> int:
        return epochs * self.per_epoch

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.per_epoch)


def test_plan_counts_steps_and_micro_batches() -> None:
    batches = EvenBatches(10)
    assert schedule.run_length(batches, config(epochs=2).training) == (20, 20)
    assert schedule.run_length(
        batches, config(epochs=1.5, gradient_accumulation_steps=4).training
    ) == (
        4,
        15,
    )
    assert schedule.run_length(batches, config(max_steps=7).training) == (7, None)
    with pytest.raises(ValueError, match="the training data gives no batch"):
        schedule.run_length(EvenBatches(0), config(epochs=1).training)
    assert schedule.epoch_progress(batches, 15) == 1.5
    assert schedule.epoch_ended(batches, 10) and not schedule.epoch_ended(batches, 11)
    assert schedule.perplexity(0.0) == 1.0 and schedule.perplexity(800.0) == float("inf")


def test_fingerprint_and_what_blocks_a_resume(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"x" * 12)
    data = tmp_path / "train.h5"
    with PreparedWriter(data, {"cache_key": "k" * 64}) as w:
        w.add(np.array([1, 2, 3]), np.array([0, 1, 1]))
    before = state.fingerprint(config(learning_rate=1e-4), model, data, None)
    assert before["model"] == {
        "config_sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "weights": {"model.safetensors": 12},
    }
    assert before["data"] == {"train": "k" * 64, "validation": None}
    assert before["settings"]["training.learning_rate"] == 1e-4
    same = state.fingerprint(config(learning_rate=1e-4, save_every=3), model, data, None)
    assert state.compare_fingerprints(before, same) == []
    after = state.fingerprint(config(learning_rate=2e-4), model, data, None)
    assert state.compare_fingerprints(before, after) == [
        "training.learning_rate was 0.0001, now 0.0002"
    ]
    # Training longer (epochs, max_steps) is allowed on resume: the one RESUME_NEUTRAL list.
    longer = config(learning_rate=1e-4, epochs=5, max_steps=9)
    assert state.compare_fingerprints(before, state.fingerprint(longer, model, data, None)) == []
    assert state.config_differences(config(learning_rate=1e-4), longer) == []
    assert state.config_differences(config(learning_rate=1e-4), config(learning_rate=2e-4)) == [
        "training.learning_rate was 0.0001, now 0.0002"
    ]
    # Threads and the torch strategy change how the work is done, not what is learned.
    made = config(learning_rate=1e-4)
    made.resources.num_threads, made.resources.strategy = 7, "fsdp"
    assert state.compare_fingerprints(before, state.fingerprint(made, model, data, None)) == []


def test_load_job_resumes_latest_whole_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (1, 2):
        with write_checkpoint(step_folder(run_dir / "checkpoints", step), step=step) as folder:
            saved = {"loop": attrs.asdict(state.LoopState(step=step))}
            (folder / state.TRAINER_STATE).write_text(json.dumps(saved), encoding="utf-8")
    spec = {
        "config": unstructure_config(config(max_steps=3)),
        "model_path": str(tmp_path / "model"),
        "train_data": str(tmp_path / "train.h5"),
        "validation_data": None,
        "run_dir": str(run_dir),
        "resume_from": "latest",
    }
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(spec), encoding="utf-8")
    job = jobs.load_job(job_file)
    assert job.resume_from == step_folder(run_dir / "checkpoints", 2)
    assert state.read_trainer_state(job.resume_from)["loop"]["step"] == 2
    assert job.config.training.max_steps == 3 and job.validation_data is None
    assert job.train_data == tmp_path / "train.h5" and job.run_dir == run_dir

    spec["config"]["training"]["epochs"] = -1
    job_file.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match=f"{job_file}: invalid config"):
        jobs.load_job(job_file)


class RecordingTrainer:
    """Emits two events and ends at step 3 (what `run_job_file` does with a trainer's result)."""

    name = "recording"

    def train(self, job, emit, should_stop) -> TrainResult:
        emit({"type": "step", "step": 1})
        emit({"type": "end", "step": 3})
        return TrainResult("completed", 3, job.run_dir / "adapter", None, {"eval_loss": 0.5})


def test_run_job_file_writes_events_and_result(tmp_path: Path, capsys) -> None:
    spec = {
        "config": unstructure_config(config()),
        "model_path": str(tmp_path / "model"),
        "train_data": str(tmp_path / "train.h5"),
        "run_dir": str(tmp_path / "run"),
        "events": str(tmp_path / "events.jsonl"),
    }
    (tmp_path / "run").mkdir()
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(spec), encoding="utf-8")
    kwargs = {"module": "ft_x.launch", "trainer": RecordingTrainer}
    assert jobs.run_job_file([], is_main=lambda: True, **kwargs) == 2
    assert capsys.readouterr().err == "usage: python -m ft_x.launch JOB.json\n"

    assert jobs.run_job_file([str(job_file)], is_main=lambda: True, **kwargs) == 0
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"type": "step", "step": 1},
        {"type": "end", "step": 3},
    ]
    adapter = str(tmp_path / "run" / "adapter")
    result = json.loads((tmp_path / "run" / "result.json").read_text(encoding="utf-8"))
    assert result == {"reason": "completed", "step": 3, "adapter_path": adapter}
    jobs.run_job_file([str(job_file)], is_main=lambda: True, with_metrics=True, **kwargs)
    result = json.loads((tmp_path / "run" / "result.json").read_text(encoding="utf-8"))
    assert result["metrics"] == {"eval_loss": 0.5}

    # other processes neither log events nor write the result
    (tmp_path / "run" / "result.json").unlink()
    jobs.run_job_file([str(job_file)], is_main=lambda: False, **kwargs)
    assert not (tmp_path / "run" / "result.json").exists()
    assert len((tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()) == 4


def test_due_and_record_evaluation() -> None:
    # every N steps, or at each epoch's end when unset
    assert [schedule.due(3, step, False) for step in (1, 2, 3, 6)] == [False, False, True, True]
    assert (schedule.due(None, 5, True), schedule.due(None, 5, False)) == (True, False)
    settings = config(early_stopping_patience=2, early_stopping_threshold=0.1).training
    loop_state = state.LoopState(step=1)
    results = []
    for step, loss in ((1, 2.0), (2, 1.95), (3, 1.5), (4, 1.6), (5, 1.45)):
        loop_state.step = step
        results.append(schedule.record_evaluation(loop_state, loss, settings))
    # 1.95 is not 0.1 better than 2.0; 1.5 is; 1.6 and 1.45 are not: patience 2 runs out.
    assert results == [(True, False), (False, False), (True, False), (False, False), (False, True)]
    assert (
        loop_state.best_metric,
        loop_state.best_step,
        loop_state.evals_without_improvement,
    ) == (1.5, 3, 2)
