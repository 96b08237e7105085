"""How runs end: early stopping (and which checkpoints stay), a stop request, a NaN."""

from __future__ import annotations

import numpy as np

from ft_models.checkpoint import read_manifest
from ft_testing.conformance.base import ConformanceBase, Run, adapter_tensors, folder_names
from ft_testing.training import JobMaker, event_types


class StoppingTests(ConformanceBase):
    """Early stopping, keep_last with the best, a stop request, a non-finite loss."""

    def test_early_stopping(self, early_stopped: Run) -> None:
        """`EARLY_STOPPING`: the first evaluation is the best and none beats it by the
        threshold, so patience 3 ends the run at step 4, reason `early_stopping`."""
        events, result = early_stopped.events, early_stopped.result
        evals = [(e["step"], e["is_best"]) for e in events if e["type"] == "eval"]
        assert evals == [(1, True), (2, False), (3, False), (4, False)]
        saved = [(e["step"], e["is_best"]) for e in events if e["type"] == "checkpoint"]
        assert saved == evals
        checkpoints = early_stopped.job.checkpoints_dir
        assert (result.reason, result.step) == ("early_stopping", 4)
        assert result.best_checkpoint == checkpoints / "step-00000001"
        assert result.adapter_path == early_stopped.job.adapter_dir

    def test_keep_last_keeps_the_best_too(self, early_stopped: Run) -> None:
        """A checkpoint each step and `keep_last: 2`: the last two and the best remain, each
        complete (its manifest's hashes match)."""
        checkpoints = early_stopped.job.checkpoints_dir
        assert folder_names(checkpoints) == ["step-00000001", "step-00000003", "step-00000004"]
        for folder in checkpoints.iterdir():
            assert read_manifest(folder).step == int(folder.name[len("step-") :])

    def test_stop_request(self, make_job: JobMaker) -> None:
        """`should_stop` saying yes: a checkpoint of the step done, no adapter."""
        job = make_job(validation=False, training__save_every=100)
        run = self.train(job, stop_at=3)
        events, result = run.events, run.result
        assert event_types(events) == ["start", "step", "step", "step", "checkpoint", "end"]
        assert (result.reason, result.step, result.adapter_path) == ("interrupted", 3, None)
        assert folder_names(job.checkpoints_dir) == ["step-00000003"]
        assert not job.adapter_dir.exists()

    def test_a_non_finite_loss_stops_before_the_step(self, make_job: JobMaker) -> None:
        """A rate of 1e30 and a LoRA scale of 2.5e9: the first update makes the adapted
        layers overflow, so the second step's loss is NaN. The run ends there, before that
        step's update, says why, names the last good checkpoint and saves nothing more."""
        job = make_job(
            validation=False,
            method__alpha=1e10,
            training__learning_rate=1e30,
            training__save_every=1,
        )
        run = self.train(job)
        events, result = run.events, run.result
        assert event_types(events) == ["start", "step", "checkpoint", "message", "end"]
        message = events[-2]
        assert message["level"] == "error", message
        assert "at step 2" in message["text"] and "step-00000001" in message["text"], message
        assert (result.reason, result.step, result.adapter_path) == ("nan", 1, None)
        assert result.best_checkpoint is None
        assert folder_names(job.checkpoints_dir) == ["step-00000001"]
        saved = adapter_tensors(job.checkpoints_dir / "step-00000001")
        assert all(np.isfinite(t).all() for t in saved.values())
        assert not job.adapter_dir.exists()
