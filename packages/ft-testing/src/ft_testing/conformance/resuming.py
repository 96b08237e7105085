"""Resuming: stopped, SIGKILLed, restarted runs end bit-identical to uninterrupted ones; what
a checkpoint must hold for that, and what it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ft_models.checkpoint import CorruptCheckpoint, latest_valid_checkpoint, read_manifest
from ft_testing.conformance.base import (
    DPO,
    EARLY_STOPPING,
    RESUME,
    ConformanceBase,
    Run,
    assert_same_losses,
    check_attempts,
    folder_names,
    step_seconds,
)
from ft_testing.conformance.crash import Launcher, kill_and_resume, launcher, write_job_file
from ft_testing.training import JobMaker, tensors_sha256
from ft_train_core.protocol import TrainJob


class ResumeTests(ConformanceBase):
    """Stop or SIGKILL, resume, and end bit-identical; corrupt checkpoints; fingerprints."""

    @pytest.fixture(scope="class")
    @classmethod
    def uninterrupted(cls, class_jobs: JobMaker) -> Run:
        """The `RESUME` run, never stopped."""
        run = cls.train(class_jobs(run="uninterrupted", **RESUME))
        assert run.result.reason == "completed" and run.result.step >= 12, run.result
        return run

    @pytest.fixture(scope="class")
    @classmethod
    def children(cls) -> Iterator[Launcher]:
        """Where the SIGKILLed job-file processes fork from. Asked for first, so that it
        imports while the other fixtures train."""
        with launcher((*cls.preload, cls.trainer.__module__)) as server:
            yield server

    def crash(
        self, children: Launcher, job: TrainJob, folder: Path, kills: int, *, like: Run
    ) -> tuple[list[dict[str, Any]], list[int | None], bool]:
        """`crash.kill_and_resume` of `job` (the kills timed by the steps of `like`, its
        uninterrupted run): every attempt's events, checked against the protocol and against
        `like`'s losses; each attempt's `resumed_from_step`; whether the first kill caught a
        checkpoint half-written."""
        events, mid_write = kill_and_resume(
            children,
            self.launch_module,
            job,
            folder,
            kills=kills,
            seed=1,
            step_seconds=step_seconds(like.events),
        )
        check_attempts(events)
        assert_same_losses(events, like.events)
        starts = [e["resumed_from_step"] for e in events if e["type"] == "start"]
        return events, starts, mid_write

    def test_stop_and_resume_is_bit_identical(self, make_job: JobMaker, uninterrupted: Run) -> None:
        """Stopped after the first step, on an evaluation step (3), one step after a resume,
        on the step that ends the first epoch (its micro-batches may span both) and one step
        before the end, and resumed each time from the newest checkpoint: the same losses,
        step for step, and the same adapter."""
        steps = uninterrupted.result.step
        epoch_end = next(e["step"] for e in uninterrupted.events if e.get("epoch", 0) >= 1.0)
        stops = sorted({1, 3, 4, epoch_end, steps - 1})
        job, seen = make_job(run="stopped", **RESUME), []
        for stop in stops:
            run = self.train(job, stop_at=stop)
            assert (run.result.reason, run.result.step) == ("interrupted", stop)
            seen += run.events
            found = latest_valid_checkpoint(job.checkpoints_dir)
            assert found is not None and found[0].name == f"step-{stop:08d}"
            job = make_job(run="stopped", resume_from=found[0], **RESUME)
        last = self.train(job)
        assert last.events[0]["resumed_from_step"] == stops[-1]
        assert last.result.reason == "completed"
        assert_same_losses(seen + last.events, uninterrupted.events)
        assert last.adapter_sha256 == uninterrupted.adapter_sha256, f"stops at {stops}"

    def test_resume_restores_the_best_and_patience(
        self, make_job: JobMaker, early_stopped: Run
    ) -> None:
        """Stopped after 2 evaluations (the best, then one without improvement) and resumed:
        it stops early where the uninterrupted run did, with the same best checkpoint."""
        job = make_job(run="early", **EARLY_STOPPING)
        stopped = self.train(job, stop_at=2)
        run = self.train(
            make_job(
                run="early", resume_from=job.checkpoints_dir / "step-00000002", **EARLY_STOPPING
            )
        )
        assert [e["step"] for e in run.events if e["type"] == "eval"] == [3, 4]
        assert (run.result.reason, run.result.step) == ("early_stopping", 4)
        assert run.result.best_checkpoint == job.checkpoints_dir / "step-00000001"
        assert folder_names(job.checkpoints_dir) == folder_names(early_stopped.job.checkpoints_dir)
        assert_same_losses(stopped.events + run.events, early_stopped.events)
        assert run.adapter_sha256 == early_stopped.adapter_sha256

    @pytest.mark.slow
    def test_sigkill_and_resume_is_bit_identical(
        self, children: Launcher, make_job: JobMaker, uninterrupted: Run, tmp_path: Path
    ) -> None:
        """`python -m <launch_module> job.json`, SIGKILLed while a checkpoint is written and
        twice at random moments, restarted each time (resuming from the newest complete
        checkpoint): the same losses, step for step, and the same adapter bytes."""
        job = make_job(run="killed", **RESUME, training__save_every=1)
        events, starts, mid_write = self.crash(children, job, tmp_path, 3, like=uninterrupted)
        # A kill may land before a child has started training (then it leaves no start event).
        assert 2 <= len(starts) <= 4 and starts[0] is None, starts
        assert events[-1]["type"] == "end" and events[-1]["reason"] == "completed", events[-1]
        assert mid_write, "the first kill should land while a checkpoint is written"
        assert starts[1], (
            f"the resume after the first kill should start from a checkpoint: {starts}"
        )
        assert tensors_sha256(job.adapter_dir) == uninterrupted.adapter_sha256
        for checkpoint in job.checkpoints_dir.iterdir():
            read_manifest(checkpoint)  # every surviving checkpoint is whole

    @pytest.mark.slow
    def test_full_finetune_sigkill_and_resume(
        self, children: Launcher, make_job: JobMaker, tmp_path: Path
    ) -> None:
        if "full" not in self.new_trainer().capabilities().methods:
            pytest.skip("this trainer has no full fine-tuning")
        settings = {
            "validation": False,
            "method__name": "full",
            "training__max_steps": 8,
            "training__save_every": 2,
            "training__learning_rate": 1e-4,
            "training__batch_size": 2,
        }
        reference = self.train(make_job(run="full-straight", **settings))
        job = make_job(run="full-killed", **settings)
        events, starts, mid_write = self.crash(children, job, tmp_path, 1, like=reference)
        assert mid_write and starts[0] is None and starts[1] >= 2, (mid_write, starts)
        assert events[-1]["reason"] == "max_steps", events[-1]
        assert tensors_sha256(job.adapter_dir, "model.safetensors") == tensors_sha256(
            reference.job.adapter_dir, "model.safetensors"
        )

    @pytest.mark.slow
    def test_dpo_sigkill_and_resume_is_bit_identical(
        self, children: Launcher, make_job: JobMaker, tmp_path: Path
    ) -> None:
        """DPO (`method.objective: dpo`) on packed preference pairs, with dropout, accumulation
        and evaluations, SIGKILLed while a checkpoint is written and once more, restarted each
        time: the same losses and preference metrics, step for step, and the same adapter."""
        if "dpo" not in self.new_trainer().capabilities().objectives:
            pytest.skip("this trainer has no DPO")
        reference = self.train(make_job(run="dpo-straight", **DPO))
        assert reference.result.reason == "max_steps", reference.result
        metrics = ("rewards_chosen", "rewards_rejected", "margin", "accuracy")
        for event in reference.events:
            if event["type"] in ("step", "eval"):
                assert all(key in event for key in metrics), event
        job = make_job(run="dpo-killed", **DPO)
        events, starts, mid_write = self.crash(children, job, tmp_path, 2, like=reference)
        assert mid_write and starts[0] is None and starts[1], (mid_write, starts)
        assert events[-1]["reason"] == "max_steps", events[-1]

        def rewards(stream: list[dict[str, Any]]) -> dict[tuple[str, int], list[float]]:
            return {
                (e["type"], e["step"]): [e[key] for key in metrics]
                for e in stream
                if e["type"] in ("step", "eval")
            }

        assert rewards(events) == rewards(reference.events)
        assert tensors_sha256(job.adapter_dir) == reference.adapter_sha256

    def test_a_corrupt_checkpoint_is_refused(self, make_job: JobMaker, tmp_path: Path) -> None:
        """A checkpoint whose bytes changed after its manifest was written: resuming from it
        raises CorruptCheckpoint; `latest` (a job file's resume) skips it."""
        from ft_train_core.jobs import load_job

        job = make_job(
            validation=False, training__max_steps=3, training__save_every=1, training__keep_last=3
        )
        self.train(job)
        newest = job.checkpoints_dir / "step-00000003"
        weights = max(newest.glob("*.safetensors"), key=lambda p: p.stat().st_size)
        data = weights.read_bytes()
        weights.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))  # same size
        found = latest_valid_checkpoint(job.checkpoints_dir)
        assert found is not None and found[0].name == "step-00000002"
        with pytest.raises(CorruptCheckpoint):
            self.new_trainer().train(
                make_job(validation=False, training__max_steps=4, resume_from=newest),
                emit=lambda event: None,
                should_stop=lambda: False,
            )
        resume = load_job(write_job_file(job, tmp_path)).resume_from
        assert resume is not None and resume.name == "step-00000002"

    def test_a_checkpoint_carries_the_runs_fingerprint(self, make_job: JobMaker) -> None:
        """What `ft train --resume` compares (`ft_train_core.state`): settings that may change
        on resume, those that may not, other data, another model."""
        from ft_train_core.state import compare_fingerprints, fingerprint, read_trainer_state

        job = make_job(validation=False, training__max_steps=1)
        self.train(job)
        saved = read_trainer_state(job.checkpoints_dir / "step-00000001")["fingerprint"]

        def changes(other: TrainJob) -> list[str]:
            now = fingerprint(
                other.config, other.model_path, other.train_data, other.validation_data
            )
            return compare_fingerprints(saved, now)

        same = make_job(validation=False, training__max_steps=5, logging__every=1)
        assert changes(same) == []
        assert changes(make_job(validation=False, training__learning_rate=5e-4)) == [
            "training.learning_rate was 0.001, now 0.0005"
        ]
        assert changes(make_job(validation=True)) == [
            "the validation data differs (a different prepared dataset)"
        ]
        other_model = changes(make_job(arch="qwen2", validation=False))
        assert "the base model differs (config.json or weight files changed)" in other_model
        assert "the train data differs (a different prepared dataset)" in other_model
