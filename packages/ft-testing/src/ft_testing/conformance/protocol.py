"""The protocol: what a trainer says about itself, the events it emits, and one plain run
of LoRA from start to finish."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ft_testing.conformance.base import (
    LORA_PARAMS,
    ConformanceBase,
    assert_same_losses,
    parameter_count,
    tensor_names,
)
from ft_testing.training import EVENT_TYPES, JobMaker, event_types, tensors_sha256
from ft_train_core.protocol import Capabilities, Launch, Trainer


class ProtocolTests(ConformanceBase):
    """The Trainer protocol, the event stream, one epoch of LoRA."""

    def test_is_a_trainer(self, make_job: JobMaker, tmp_path: Path) -> None:
        trainer = self.new_trainer()
        assert isinstance(trainer, Trainer) and isinstance(trainer.name, str) and trainer.name
        caps = trainer.capabilities()
        assert isinstance(caps, Capabilities)
        assert "lora" in caps.methods and "causal-lm" in caps.tasks, caps
        assert "cpu" in caps.devices and "fp32" in caps.dtypes, caps
        assert trainer.placement(make_job().config).precision == "fp32"
        job_file = tmp_path / "job.json"
        one = trainer.launch_command(job_file, Launch())
        assert all(isinstance(arg, str) for arg in one) and str(job_file) in one, one
        if caps.distributed:
            two = trainer.launch_command(job_file, Launch(nproc=2))
            assert all(isinstance(arg, str) for arg in two) and str(job_file) in two, two
        else:
            with pytest.raises(ValueError):
                trainer.launch_command(job_file, Launch(nproc=2))

    def test_events_follow_the_protocol(self, make_job: JobMaker) -> None:
        """Every kind of event, each with its TypedDict's keys and types (as every run of the
        suite is checked), and a resume with a changed setting says what changed."""
        first = self.train(make_job(training__max_steps=1))
        resumed = self.train(
            make_job(
                training__max_steps=2,
                training__learning_rate=5e-4,
                resume_from=first.job.checkpoints_dir / "step-00000001",
            )
        )
        assert set(event_types(first.events + resumed.events)) == set(EVENT_TYPES)
        messages = [(e["level"], e["text"]) for e in resumed.events if e["type"] == "message"]
        assert messages == [
            ("warning", "resuming with a change: training.learning_rate was 0.001, now 0.0005")
        ]
        start = resumed.events[0]
        assert (start["resumed_from_step"], start["total_steps"]) == (1, 2)
        assert (resumed.result.reason, resumed.result.step) == ("max_steps", 2)

    def test_one_epoch_of_lora(self, make_job: JobMaker) -> None:
        """32 rows in batches of 4: 8 steps, then an evaluation, a checkpoint and the adapter,
        in PEFT's layout, with the checkpoint's tensors."""
        from ft_data.hdf5 import PreparedDataset

        job = make_job()
        run = self.train(job)
        events, result = run.events, run.result
        assert event_types(events) == ["start"] + ["step"] * 8 + [
            "eval",
            "samples",
            "checkpoint",
            "end",
        ]
        start = events[0]
        base = parameter_count(job.model_path / "model.safetensors")
        assert (start["trainable_params"], start["total_params"]) == (
            LORA_PARAMS,
            base + LORA_PARAMS,
        )
        assert (start["total_steps"], start["dtype"], start["resumed_from_step"]) == (
            8,
            "fp32",
            None,
        )
        steps = [e for e in events if e["type"] == "step"]
        assert [e["epoch"] for e in steps] == [k / 8 for k in range(1, 9)]
        assert all(e["learning_rate"] == 1e-3 and e["tokens"] > 0 for e in steps)
        assert all(math.isfinite(e["loss"]) and e["grad_norm"] > 0 for e in steps)
        with PreparedDataset(job.train_data) as data:  # every non-padding token, once
            assert sum(e["tokens"] for e in steps) == data.num_tokens
        assert (events[-4]["step"], events[-4]["is_best"]) == (8, True)
        checkpoint = job.checkpoints_dir / "step-00000008"
        assert events[-2] == {"type": "checkpoint", "step": 8, "path": str(checkpoint), "is_best": True}  # fmt: skip
        assert (result.reason, result.adapter_path, result.best_checkpoint) == (
            "completed",
            job.adapter_dir,
            checkpoint,
        )
        config = json.loads((job.adapter_dir / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (
            4,
            8,
            ["q_proj", "v_proj"],
        )
        assert tensor_names(job.adapter_dir / "adapter_model.safetensors") == {
            f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{ab}.weight"
            for layer in (0, 1)
            for module in ("q_proj", "v_proj")
            for ab in "AB"
        }
        assert tensors_sha256(job.adapter_dir) == tensors_sha256(checkpoint)

    def test_samples_follow_each_evaluation(
        self, make_job: JobMaker, alpaca_short_rows: list[dict[str, str]]
    ) -> None:
        """`training.eval_samples` validation prompts answered after every evaluation, with
        the model of that step, greedily, at most `eval_sample_tokens` tokens each: the
        first validation rows' prompts (through the chat template) and their own answers as
        references; `eval_samples: 0` answers none, and trains bit-identically (the answers
        draw from no random generator: dropout's masks stay the same)."""
        settings = {"training__max_steps": 2, "training__eval_every": 1, "method__dropout": 0.1}
        run = self.train(
            make_job(**settings, training__eval_samples=2, training__eval_sample_tokens=5)
        )
        kinds = event_types(run.events)
        evals = [i for i, kind in enumerate(kinds) if kind == "eval"]
        assert len(evals) == 2 and [kinds[i + 1] for i in evals] == ["samples", "samples"], kinds
        validation = alpaca_short_rows[32:40]  # the rows of the validation set, in order
        for i in evals:
            evaluation, answered = run.events[i], run.events[i + 1]
            assert answered["step"] == evaluation["step"]
            assert len(answered["samples"]) == 2
            for sample, row in zip(answered["samples"], validation, strict=False):
                assert row["instruction"] in sample["prompt"], (sample, row)
                # The reference is the row's answer (cut where the rows are cut, if they are).
                assert sample["reference"] and row["output"].startswith(sample["reference"])
                # A random model does not find the stop token within 5 tokens.
                assert sample["output_tokens"] == 5 and sample["output"], sample
        off = self.train(make_job(run="no-samples", **settings, training__eval_samples=0))
        assert "samples" not in event_types(off.events)
        assert_same_losses(off.events, run.events)
        assert tensors_sha256(off.result.adapter_path) == tensors_sha256(run.result.adapter_path)
