"""LoRA and full fine-tuning on the tiny llama: events, files, numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tensors_sha256, train, types

from ft_runs.protocols import Trainer
from ft_train_torch import TorchTrainer
from ft_train_torch.optim import lr_factor

CHECKPOINT_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "manifest.json",
    "optimizer.json",
    "optimizer.safetensors",
    "rng.safetensors",
    "trainer_state.json",
}


def test_capabilities_and_protocol() -> None:
    trainer = TorchTrainer()
    assert isinstance(trainer, Trainer)
    caps = trainer.capabilities()
    assert caps.backend == "torch" and caps.distributed
    assert {"lora", "dora", "full", "prefix", "p-tuning"} <= set(caps.methods)
    assert "cpu" in caps.devices
    if not torch.cuda.is_available():
        assert "qlora" not in caps.methods and "fp16" not in caps.dtypes


def test_lora_run(make_job, tiny_llama) -> None:
    job = make_job()
    events, result = train(job)
    # 32 rows, batch 4, one epoch: 8 steps, one evaluation and one checkpoint at the end.
    assert types(events) == ["start"] + ["step"] * 8 + ["eval", "checkpoint", "end"]
    start = events[0]
    # r=4 on q_proj (64 -> 64) and v_proj (64 -> 32: 2 kv heads of 16) in 2 layers.
    assert start["trainable_params"] == 2 * (4 * (64 + 64) + 4 * (64 + 32)) == 1792
    import peft
    from transformers import AutoModelForCausalLM

    reference = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    assert (
        start["trainable_params"],
        start["total_params"],
    ) == reference.get_nb_trainable_parameters()
    assert (start["total_steps"], start["device"], start["dtype"], start["resumed_from_step"]) == (
        8,
        "cpu",
        "fp32",
        None,
    )
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 9))
    assert steps[-1]["epoch"] == 1.0 and steps[0]["epoch"] == 0.125
    for e in steps:
        assert set(e) == {
            "type",
            "step",
            "epoch",
            "loss",
            "learning_rate",
            "grad_norm",
            "tokens",
            "tokens_per_s",
            "elapsed_s",
            "memory_bytes",
        }
        assert e["learning_rate"] == 1e-3 and math.isfinite(e["loss"]) and e["tokens"] > 0
    with __import__("ft_data.hdf5", fromlist=["x"]).PreparedDataset(job.train_data) as data:
        assert sum(e["tokens"] for e in steps) == data.num_tokens  # every non-padding token, once
    evaluation = events[-3]
    assert evaluation["step"] == 8 and evaluation["is_best"]
    assert evaluation["perplexity"] == pytest.approx(math.exp(evaluation["eval_loss"]))
    checkpoint = job.checkpoints_dir / "step-00000008"
    assert events[-2] == {"type": "checkpoint", "step": 8, "path": str(checkpoint), "is_best": True}
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES
    assert events[-1] == {
        "type": "end",
        "step": 8,
        "reason": "completed",
        "adapter_path": str(job.adapter_dir),
        "best_checkpoint": str(checkpoint),
    }
    assert (result.reason, result.step, result.adapter_path, result.best_checkpoint) == (
        "completed",
        8,
        job.adapter_dir,
        checkpoint,
    )
    # The final adapter: PEFT's layout, loadable by peft, equal to the last checkpoint's.
    assert {p.name for p in job.adapter_dir.iterdir()} == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert tensors_sha256(job.adapter_dir) == tensors_sha256(checkpoint)
    adapter_config = json.loads((job.adapter_dir / "adapter_config.json").read_text())
    assert (
        adapter_config["r"],
        adapter_config["lora_alpha"],
        sorted(adapter_config["target_modules"]),
    ) == (4, 8, ["q_proj", "v_proj"])
    loaded = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), job.adapter_dir
    )
    saved = load_file(str(job.adapter_dir / "adapter_model.safetensors"))
    state = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert len(saved) == len(state) == 8
    for name, tensor in saved.items():
        assert torch.equal(state[name.replace(".weight", ".default.weight")], tensor)


def test_overfits(make_job) -> None:
    """A high rate: the loss falls well below its start (ln 512 = 6.24). The tiny model's random
    lm_head caps its logits near +-1 whatever the layers below do, so the adapter includes it."""
    job = make_job(
        validation=False,
        method__target_modules=["q_proj", "v_proj", "lm_head"],
        method__rank=8,
        training__learning_rate=1e-2,
        training__max_steps=40,
    )
    events, result = train(job)
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert result.reason == "max_steps" and len(losses) == 40
    assert losses[0] > 6.0
    assert sum(losses[-8:]) / 8 < losses[0] - 1.0


def test_accumulation_equals_one_big_batch(make_job) -> None:
    """2 micro-batches of 2 rows, normalised by the trained tokens of both, are one batch of 4."""
    common = {
        "validation": False,
        "training__max_steps": 4,
        "training__lr_scheduler": "cosine",
        "training__warmup_steps": 1,
        "method__dropout": 0.0,
    }
    _, one = train(make_job(run="one", training__batch_size=4, **common))
    _, two = train(
        make_job(
            run="two", training__batch_size=2, training__gradient_accumulation_steps=2, **common
        )
    )
    a, b = (
        load_file(str(one.adapter_path / "adapter_model.safetensors")),
        load_file(str(two.adapter_path / "adapter_model.safetensors")),
    )
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    base = load_file(str(one.adapter_path / "adapter_model.safetensors"))
    assert any(t.abs().max() > 1e-4 for n, t in base.items() if "lora_B" in n)  # it did train


def test_schedules() -> None:
    assert [lr_factor(s, schedule="constant", warmup=3, total=10) for s in range(5)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
    ]
    assert [lr_factor(s, schedule="linear", warmup=0, total=4) for s in range(4)] == [
        1.0,
        0.75,
        0.5,
        0.25,
    ]
    assert lr_factor(2, schedule="cosine", warmup=0, total=4) == pytest.approx(0.5)
    assert lr_factor(1, schedule="cosine", warmup=1, total=5) == 1.0


def test_warmup_ratio_and_cosine_in_events(make_job) -> None:
    job = make_job(
        validation=False,
        training__max_steps=4,
        training__warmup_steps=None,
        training__warmup_ratio=0.5,
        training__lr_scheduler="cosine",
    )
    events, _ = train(job)
    rates = [e["learning_rate"] for e in events if e["type"] == "step"]
    assert rates == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 0.5e-3])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adafactor"])
def test_other_optimizers(make_job, optimizer) -> None:
    job = make_job(
        validation=False,
        training__max_steps=2,
        training__optimizer=optimizer,
        training__weight_decay=0.01,
    )
    _events, result = train(job)
    assert result.reason == "max_steps"
    optim = json.loads((job.checkpoints_dir / "step-00000002" / "optimizer.json").read_text())
    keys = {k.split(".", 2)[2] for k in optim["tensor_keys"]}
    expected = {
        "adam": {"step", "exp_avg", "exp_avg_sq"},
        "sgd": {"momentum_buffer"},
        "adafactor": {"exp_avg_sq_row", "exp_avg_sq_col"},
    }[optimizer]
    assert expected <= keys


def test_clipping(make_job) -> None:
    events, _ = train(
        make_job(validation=False, training__max_steps=2, training__max_grad_norm=1e-3)
    )
    # grad_norm is the norm before clipping, so clipping shows in the weights, not the event.
    assert all(e["grad_norm"] > 1e-3 for e in events if e["type"] == "step")


def test_eval_best_early_stopping_and_pruning(make_job) -> None:
    """With a threshold no improvement can pass, the first evaluation stays the best, and
    patience 2 stops the run two evaluations later; keep_last 1 keeps the best and the last."""
    job = make_job(
        training__eval_every=1,
        training__save_every=1,
        training__keep_last=1,
        training__early_stopping_patience=2,
        training__early_stopping_threshold=10.0,
    )
    events, result = train(job)
    evals = [e for e in events if e["type"] == "eval"]
    assert [(e["step"], e["is_best"]) for e in evals] == [(1, True), (2, False), (3, False)]
    assert [(e["step"], e["is_best"]) for e in events if e["type"] == "checkpoint"] == [
        (1, True),
        (2, False),
        (3, False),
    ]
    assert (result.reason, result.step) == ("early_stopping", 3)
    assert result.best_checkpoint == job.checkpoints_dir / "step-00000001"
    assert sorted(p.name for p in job.checkpoints_dir.iterdir()) == [
        "step-00000001",
        "step-00000003",
    ]
    assert events[-1]["reason"] == "early_stopping" and result.adapter_path == job.adapter_dir


def test_interrupted(make_job) -> None:
    job = make_job(validation=False)
    events, result = train(job, stop_at=3)
    assert types(events) == ["start", "step", "step", "step", "checkpoint", "end"]
    assert (result.reason, result.step, result.adapter_path) == ("interrupted", 3, None)
    assert events[-1]["reason"] == "interrupted"
    assert [p.name for p in job.checkpoints_dir.iterdir()] == ["step-00000003"]
    assert not job.adapter_dir.exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(make_job, monkeypatch) -> None:
    import ft_train_torch.trainer as trainer_module

    calls = {"n": 0}
    real = trainer_module.selected_lm_loss

    def poisoned(logits, batch):
        calls["n"] += 1
        loss = real(logits, batch)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(trainer_module, "selected_lm_loss", poisoned)
    job = make_job(validation=False, training__save_every=1)
    events, result = train(job)
    assert types(events) == ["start", "step", "checkpoint", "step", "checkpoint", "message", "end"]
    message = events[-2]
    assert message["level"] == "error" and "loss is nan at step 3" in message["text"]
    assert "step-00000002" in message["text"]
    assert (result.reason, result.step, result.adapter_path) == ("nan", 2, None)
    assert sorted(p.name for p in job.checkpoints_dir.iterdir()) == [
        "step-00000001",
        "step-00000002",
    ]


def test_full_finetune(make_job, tiny_llama) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = make_job(
        validation=False, method__name="full", training__max_steps=2, training__learning_rate=1e-4
    )
    events, result = train(job)
    start = events[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert (
        start["trainable_params"]
        == start["total_params"]
        == sum(p.numel() for p in base.parameters())
    )
    files = {p.name for p in result.adapter_path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    trained = AutoModelForCausalLM.from_pretrained(result.adapter_path)
    assert AutoTokenizer.from_pretrained(result.adapter_path).eos_token == "<|im_end|>"
    before, after = base.state_dict(), trained.state_dict()
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert (
        "model.layers.0.self_attn.q_proj.weight" in changed
        and "model.embed_tokens.weight" in changed
    )
    checkpoint = job.checkpoints_dir / "step-00000002"
    assert {"model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }


def test_auto_batch_size_plans_from_the_data_and_the_memory_estimate(make_job) -> None:
    """Called from Python (no `ft train` plan), the trainer makes the plan itself: the tokens
    of a step from the data's size, the micro-batch from the memory estimate; a limit under
    which not even one row fits is refused before training, with the figures."""
    from ft_runs.plan import PlanRefused

    events, result = train(
        make_job(training__batch_size="auto", training__max_steps=1, data__packing=True)
    )
    notes = [e["text"] for e in events if e["type"] == "message"]
    assert notes[0].startswith("tokens per step: 256 (auto: about 1/128 of the run's")
    # Rows no longer than max_seq_length (128 here): 2 of them make the step's 256 tokens.
    assert notes[1].startswith("micro-batch: 2 row(s) of 128 tokens x 1 accumulated")
    assert result.step == 1
    with pytest.raises(PlanRefused, match=r"one row of \d+ tokens needs about 0\.\d GB"):
        train(
            make_job(
                run="none",
                training__batch_size="auto",
                training__max_steps=1,
                resources__max_memory_gb=0.06,
            )
        )
