"""What only the torch trainer does: peft's adapters and parameter counts, transformers' full
fine-tunes, its optimizers, clipping and plans. What every trainer does (events, resume,
packing, accumulation, early stopping, NaN...) is ft_testing's conformance suite
(test_conformance.py)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from safetensors.torch import load_file

from ft_testing import training
from ft_train_torch import TorchTrainer
from ft_train_torch.optim import lr_factor

train = partial(training.train, TorchTrainer)

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


def test_capabilities() -> None:
    caps = TorchTrainer().capabilities()
    assert caps.backend == "torch" and caps.distributed
    assert {"lora", "dora", "full", "prefix", "p-tuning"} <= set(caps.methods)
    assert "cpu" in caps.devices
    if not torch.cuda.is_available():
        assert "qlora" not in caps.methods and "fp16" not in caps.dtypes


def test_the_lora_adapter_loads_in_peft(make_job, tiny_llama) -> None:
    """The parameter counts are peft's; the checkpoint's files; the final adapter loads in
    peft with the trained tensors."""
    import peft
    from transformers import AutoModelForCausalLM

    job = make_job(validation=False, training__max_steps=2, training__save_every=2)
    events, result = train(job)
    reference = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    start = events[0]
    assert (
        start["trainable_params"],
        start["total_params"],
    ) == reference.get_nb_trainable_parameters()
    assert start["device"] == "cpu"
    assert {p.name for p in (job.checkpoints_dir / "step-00000002").iterdir()} == CHECKPOINT_FILES
    assert {p.name for p in result.adapter_path.iterdir()} == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    loaded = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), result.adapter_path
    )
    saved = load_file(str(result.adapter_path / "adapter_model.safetensors"))
    state = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert len(saved) == len(state) == 8
    for name, tensor in saved.items():
        assert torch.equal(state[name.replace(".weight", ".default.weight")], tensor)


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
    from ft_train_core.plan import PlanRefused

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
