"""DoRA, prefix tuning, P-tuning, QLoRA's refusal, sequence classification, precisions,
gradient checkpointing and torch.compile."""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ft_config import MethodConfig, TrainingConfig
from ft_testing import training
from ft_testing.training import tensors_sha256
from ft_train_torch import TorchTrainer, loop
from ft_train_torch.methods import QLORA_NO_CUDA, apply_method, check_method, count_parameters
from ft_train_torch.optim import build_optimizer, build_scheduler
from ft_train_torch.packing import classification_loss, model_inputs
from ft_train_torch.state import LoopState

train = partial(training.train, TorchTrainer)


def test_dora(make_job) -> None:
    job = make_job(validation=False, method__name="dora", training__max_steps=2)
    events, result = train(job)
    # LoRA's 1792 plus DoRA's magnitude vectors: one per output feature of q_proj (64) and v_proj (32).
    assert events[0]["trainable_params"] == 1792 + 2 * (64 + 32)
    saved = load_file(str(result.adapter_path / "adapter_model.safetensors"))
    assert sum("lora_magnitude_vector" in name for name in saved) == 4
    assert json.loads((result.adapter_path / "adapter_config.json").read_text())["use_dora"] is True


@pytest.mark.parametrize(
    ("method", "peft_type"), [("prefix", "PREFIX_TUNING"), ("p-tuning", "P_TUNING")]
)
def test_prompt_methods_train_and_resume(make_job, method, peft_type) -> None:
    settings = {
        "validation": False,
        "method__name": method,
        "method__num_virtual_tokens": 4,
        "training__max_steps": 4,
        "data__packing": True,
    }
    events, straight = train(make_job(run="straight", **settings))
    assert events[1] == {
        "type": "message",
        "level": "info",
        "text": f"method {method} adds virtual tokens to each row: packing is off, rows are padded",
    }
    assert (
        json.loads((straight.adapter_path / "adapter_config.json").read_text())["peft_type"]
        == peft_type
    )
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert all(np.isfinite(losses))
    job = make_job(run="resumed", **settings)
    train(job, stop_at=2)
    _, resumed = train(
        make_job(run="resumed", resume_from=job.checkpoints_dir / "step-00000002", **settings)
    )
    assert tensors_sha256(resumed.adapter_path, "trainable.safetensors") == tensors_sha256(
        straight.adapter_path, "trainable.safetensors"
    )


@pytest.mark.parametrize("method", ["lora", "prefix", "p-tuning"])
def test_samples_are_the_answers_of_the_model_at_that_step(make_job, method) -> None:
    """A run's evaluation samples are its model's greedy answers at that step: the saved
    adapter loaded with peft, one whole forward pass per token (LoRA's answers come through
    the KV cache and SDPA, ft's training attention switched off while generating). For the
    prompt-learning methods they are not the base model's: the virtual tokens are in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ft_data.tokenizer import load_tokenizer

    job = make_job(
        run=f"samples-{method}",
        method__name=method,
        **({"method__num_virtual_tokens": 4} if method != "lora" else {}),
        training__max_steps=1,
        training__eval_samples=1,
        training__eval_sample_tokens=5,
    )
    events, result = train(job)
    [[sample]] = [e["samples"] for e in events if e["type"] == "samples"]
    tokenizer = load_tokenizer(job.model_path).tokenizer
    prompt = tokenizer.encode(sample["prompt"], add_special_tokens=False).ids

    def greedy(model: torch.nn.Module) -> str:
        out: list[int] = []
        with torch.no_grad():
            for _ in range(5):
                logits = model(input_ids=torch.tensor([prompt + out])).logits[0, -1]
                out.append(int(logits.argmax()))
        return tokenizer.decode(out, skip_special_tokens=True).strip()

    base = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=torch.float32).eval()
    base_answer = greedy(base)
    tuned = PeftModel.from_pretrained(base, str(result.adapter_path)).eval()
    assert sample["output_tokens"] == 5
    assert sample["output"] == greedy(tuned)
    if method != "lora":  # one step leaves LoRA's (zero-initialised) update too small to show
        assert sample["output"] != base_answer


def test_qlora_without_cuda_is_a_clear_error(make_job) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError) as error:
        train(make_job(method__name="qlora"))
    assert (
        str(error.value)
        == QLORA_NO_CUDA
        == (
            "QLoRA needs an NVIDIA GPU with bitsandbytes; this machine has no CUDA device: use method: lora"
        )
    )


@pytest.mark.gpu
def test_qlora_on_cuda(make_job) -> None:
    pytest.importorskip("bitsandbytes")
    job = make_job(
        validation=False, method__name="qlora", training__max_steps=2, resources__device="cuda"
    )
    events, result = train(job)
    assert result.reason == "max_steps" and events[0]["dtype"] in ("bf16", "fp32")


@pytest.mark.gpu
def test_fp16_and_activation_offloading_on_cuda(make_job) -> None:
    job = make_job(
        validation=False,
        training__max_steps=2,
        training__precision="fp16",
        resources__device="cuda",
        resources__activation_offloading=True,
    )
    events, result = train(job)
    assert result.reason == "max_steps" and events[0]["dtype"] == "fp16"


def test_fp16_on_cpu_is_a_clear_error(make_job) -> None:
    with pytest.raises(ValueError, match="precision: fp16 needs a CUDA GPU"):
        train(make_job(training__precision="fp16"))


def test_bf16_gradient_checkpointing_and_offloading_warning(make_job) -> None:
    job = make_job(
        validation=False,
        training__max_steps=2,
        training__precision="bf16",
        training__gradient_checkpointing=True,
        resources__activation_offloading=True,
    )
    events, result = train(job)
    assert events[0]["dtype"] == "bf16" and result.reason == "max_steps"
    assert {
        "type": "message",
        "level": "warning",
        "text": "resources.activation_offloading is for CUDA; ignored on cpu",
    } in events
    # Adapters stay fp32 under bf16 autocast.
    assert {
        t.dtype for t in load_file(str(result.adapter_path / "adapter_model.safetensors")).values()
    } == {torch.float32}


def test_gradient_checkpointing_gives_the_same_update(make_job) -> None:
    common = {"validation": False, "training__max_steps": 2}
    _, plain = train(make_job(run="plain", **common))
    _, checkpointed = train(make_job(run="ckpt", training__gradient_checkpointing=True, **common))
    a = load_file(str(plain.adapter_path / "adapter_model.safetensors"))
    b = load_file(str(checkpointed.adapter_path / "adapter_model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("FT_TEST_COMPILE"),
    reason="torch.compile's first step takes minutes on a "
    "2-core CPU; set FT_TEST_COMPILE=1 to run it",
)
def test_compile_runs_two_steps(make_job) -> None:
    events, result = train(
        make_job(validation=False, training__max_steps=2, training__compile=True)
    )
    assert result.reason == "max_steps"
    assert all(np.isfinite(e["loss"]) for e in events if e["type"] == "step")


def test_unknown_method_and_qlora_check() -> None:
    with pytest.raises(ValueError, match="unknown method 'ia3'"):
        check_method("ia3", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="QLoRA needs an NVIDIA GPU"):
        check_method("qlora", torch.device("cpu"))


# -- sequence classification through the loop, with batches built here -----------------------------


class ListBatches:
    """The part of ft-data's Batches the loop uses, over a fixed list of batches (one epoch)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.items = batches

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.items)

    def steps(self, epochs: int) -> int:
        return epochs * len(self.items)

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, len(self.items))

    def iter_from(self, step: int = 0, *, epochs: int | None = None):
        while epochs is None or step < epochs * len(self.items):
            yield self.items[step % len(self.items)]
            step += 1


def test_sequence_classification_with_lora(tiny_model_factory, tmp_path) -> None:
    """ft-data's prepared datasets carry no class labels yet, so the batches are built here:
    "capital"-questions are class 1, the rest class 0. The classifier head trains with the adapter."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_model_factory("bert")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [
        "What is the capital of France?",
        "Write a short poem about the sea.",
        "What is the capital of Italy?",
        "Explain why the sky is blue.",
        "The capital of France is Paris.",
        "One two three four five.",
        "Rome is the capital of Italy.",
        "Monday, Tuesday, Wednesday.",
    ]
    labels = [1, 0, 1, 0, 1, 0, 1, 0]
    batches = []
    for start in (0, 4):
        encoded = tokenizer(texts[start : start + 4], padding=True, return_tensors="np")
        batches.append(
            {
                "input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64),
                "token_type_ids": encoded["token_type_ids"].astype(np.int64),
                "labels": np.asarray(labels[start : start + 4]),
            }
        )
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(folder)
    model = apply_method(
        base,
        MethodConfig(name="lora", rank=4, target_modules=["query", "value"], dropout=0.0),
        "sequence-classification",
    )
    trainable, _ = count_parameters(model)
    # r=4 on query and value (64 -> 64) in 2 layers, plus the classifier (64*2 + 2), which peft trains too.
    assert trainable == 2 * 2 * 4 * (64 + 64) + 64 * 2 + 2
    settings = TrainingConfig(
        max_steps=30,
        batch_size=4,
        learning_rate=2e-2,
        warmup_steps=0,
        lr_scheduler="constant",
        keep_last=1,
        save_every=100,
    )
    optimizer = build_optimizer(model.parameters(), settings)
    source = ListBatches(batches)

    def loss(module, batch):
        return classification_loss(
            module(
                **model_inputs(batch, torch.device("cpu"), task="sequence-classification")
            ).logits,
            batch,
        )

    events: list[dict] = []
    outcome = loop.run(
        loop.Loop(
            model=model,
            optimizer=optimizer,
            scheduler=build_scheduler(optimizer, settings, 30),
            batches=source,
            settings=settings,
            total_steps=30,
            total_micro_batches=None,
            accumulation=1,
            loss=loss,
            count=lambda b: len(b["labels"]),
            save=lambda folder, state, position, gathered: None,
            checkpoints_dir=tmp_path / "checkpoints",
            device=torch.device("cpu"),
            eval_batches=source,
        ),
        LoopState(),
        events.append,
        lambda: False,
    )
    assert outcome.reason == "max_steps"
    evals = [e["eval_loss"] for e in events if e["type"] == "eval"]
    assert evals[-1] < 0.2 < evals[0]  # learnt the 8 rows
    with torch.no_grad():
        predicted = [
            int(
                model(
                    **model_inputs(b, torch.device("cpu"), task="sequence-classification")
                ).logits.argmax(-1)[i]
            )
            for b in batches
            for i in range(4)
        ]
    assert predicted == labels
