"""DPO and ORPO (`method.objective`) in the torch trainer: on the same batch and weights, ft's
losses equal TRL's (`DPOTrainer`, `ORPOTrainer`: TRL is a test-only dependency), through the
loss code each trainer trains with; the conservative DPO formula; the refusal of data without
pairs."""

from __future__ import annotations

import contextlib
import copy
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ft_data.hdf5 import PreparedDataset, PreparedWriter
from ft_train_core.preference import PairBatches, PreferenceDataError, pair_count, pair_layout
from ft_train_torch.packing import use_packed_attention
from ft_train_torch.preference import dpo_loss
from ft_train_torch.trainer import TorchTrainer, _Objective

TOLERANCE = 1e-5
PAIRS = 4


def write_pairs(path: Path, prompt_lengths: list[int], seed: int) -> Path:
    """Random token pairs (ids 3..499 of the tiny vocabulary): a prompt of each length, then
    a chosen and a rejected answer of 3 to 9 tokens; the masks cover the answers."""
    rng = np.random.default_rng(seed)
    with PreparedWriter(path, {"pad_token_id": 0}) as writer:
        for length in prompt_lengths:
            prompt = rng.integers(3, 500, length)
            chosen = rng.integers(3, 500, int(rng.integers(3, 10)))
            rejected = rng.integers(3, 500, int(rng.integers(3, 10)))
            sides = [
                (np.concatenate([prompt, a]), np.r_[np.zeros(length), np.ones(len(a))])
                for a in (chosen, rejected)
            ]
            writer.add(*sides[0], rejected=sides[1])
    return path


def trl_examples(path: Path) -> list[dict[str, list[int]]]:
    """The pairs of `path` as TRL's preference collator takes them (prompt, chosen, rejected
    token ids)."""
    examples = []
    with PreparedDataset(path) as data:
        for i in range(len(data)):
            (chosen, mask), (rejected, _) = data[i], data.rejected(i)
            start = int(np.argmax(mask))
            examples.append(
                {
                    "prompt_ids": chosen[:start].tolist(),
                    "chosen_ids": chosen[start:].tolist(),
                    "rejected_ids": rejected[start:].tolist(),
                }
            )
    return examples


@pytest.fixture(scope="module")
def policy(tiny_llama: Path) -> torch.nn.Module:
    """The tiny Llama with a LoRA adapter (r=4 on q_proj and v_proj) whose B matrices are
    random, not zero: the policy differs from the reference (the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 2.0)
    return model.eval()


def ft_loss(model: torch.nn.Module, path: Path, **method: object) -> float:
    """ft's loss of the first `PAIRS` pairs of `path` (one padded batch), per pair, through the
    torch trainer's own objective (`trainer._Objective`: chunked output head, reference with
    the adapter off)."""
    model = copy.deepcopy(model)
    use_packed_attention(model)
    settings = {"beta": 0.1, "label_smoothing": 0.0, "orpo_lambda": 0.1, "name": "lora"}
    run = types.SimpleNamespace(
        precision="fp32",
        device=torch.device("cpu"),
        fsdp=False,
        settings=types.SimpleNamespace(compile=False),
        classify=False,
        prompt=False,
        task="causal-lm",
        base=model.get_base_model(),
        model=model,
        wrapped=model,
        forward=model,
        method=types.SimpleNamespace(**{**settings, **method}),
    )
    run.config = types.SimpleNamespace(method=run.method)
    with PreparedDataset(path) as data, contextlib.ExitStack() as stack:
        batches = PairBatches(data, batch_size=PAIRS, max_seq_length=64, shuffle=False)
        batch = batches.batch(0)
        assert list(pair_layout(batch).pair_ids) == list(range(PAIRS))
        objective = _Objective(run, stack)  # type: ignore[arg-type]
        with torch.no_grad():
            return float(objective.loss(model, batch)) / pair_count(batch)


def test_dpo_loss_equals_trls(policy: torch.nn.Module, tiny_llama: Path, tmp_path: Path) -> None:
    """DPO (sigmoid, beta 0.5), reference = the base with the adapter off: ft's loss on a batch
    of 4 pairs (prompts of 2 to 9 tokens) is TRL's DPOTrainer's on the same tokens."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    path = write_pairs(tmp_path / "pairs.h5", [2, 9, 5, 7], seed=1)
    ours = ft_loss(policy, path, objective="dpo", beta=0.5)

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=0.5,
        report_to=[],
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=PAIRS,
    )
    stub = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    trainer = DPOTrainer(
        model=copy.deepcopy(policy), args=args, train_dataset=stub, processing_class=tokenizer
    )
    # TRL takes a PeftModel given to it as an adapter trained before, and copies it as the
    # reference ("ref"); a new adapter's reference is the base, as ft's: TRL's own path for that
    # (its `peft_config` argument) disables the adapter, which it does without the copy.
    trainer.model.delete_adapter("ref")
    inputs = DataCollatorForPreference(pad_token_id=0)(trl_examples(path))
    trainer.model.eval()
    with torch.no_grad():
        theirs = float(trainer._compute_loss(trainer.model, inputs, return_outputs=False))
    print("ft", ours, "TRL", theirs)
    assert abs(ours - math.log(2)) > 1e-2  # the policy is not the reference: a real test
    assert ours == pytest.approx(theirs, abs=TOLERANCE)


def test_orpo_loss_equals_trls(policy: torch.nn.Module, tiny_llama: Path, tmp_path: Path) -> None:
    """ORPO (lambda 0.1): ft's loss on a batch of 4 pairs is TRL's ORPOTrainer's on the same
    tokens. TRL's ORPOTrainer adds the prompt's tokens to the chosen answer's cross-entropy;
    ft, as the ORPO paper and ft's supervised loss, the answer's only: the prompts here are one
    token (never a target), where the two agree."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    path = write_pairs(tmp_path / "pairs.h5", [1, 1, 1, 1], seed=2)
    ours = ft_loss(policy, path, objective="orpo", orpo_lambda=0.1)

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    args = ORPOConfig(
        output_dir=str(tmp_path / "trl"), beta=0.1, report_to=[], use_cpu=True, bf16=False
    )
    stub = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    trainer = ORPOTrainer(
        model=copy.deepcopy(policy), args=args, train_dataset=stub, processing_class=tokenizer
    )
    examples = trl_examples(path)

    def side(name: str) -> dict[str, torch.Tensor]:
        rows = [e["prompt_ids"] + e[f"{name}_ids"] for e in examples]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = ids.masked_fill(attention == 0, -100)
        labels[:, :1] = -100  # the prompt
        return {
            f"{name}_input_ids": ids,
            f"{name}_attention_mask": attention,
            f"{name}_labels": labels,
        }

    batch = {**side("chosen"), **side("rejected")}
    trainer.model.eval()
    with torch.no_grad():
        theirs, _ = trainer.get_batch_loss_metrics(trainer.model, batch)
    print("ft", ours, "TRL", float(theirs))
    assert ours == pytest.approx(float(theirs), abs=TOLERANCE)


def test_label_smoothing_is_conservative_dpo() -> None:
    """With label smoothing e, each pair's loss is (1 - e) -log sigmoid(z) + e -log sigmoid(-z),
    z = beta x (the chosen answer's log-ratio - the rejected's) (cDPO, TRL 0.x's sigmoid)."""
    chosen, rejected = torch.tensor([-10.0, -7.0]), torch.tensor([-12.0, -6.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -7.5]), torch.tensor([-11.5, -6.5])
    summed, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, beta=0.5, label_smoothing=0.2
    )
    z = 0.5 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    expected = sum(
        0.8 * math.log1p(math.exp(-v)) + 0.2 * math.log1p(math.exp(v)) for v in z.tolist()
    )
    assert float(summed) == pytest.approx(expected, rel=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.5, 0.25])
    assert rejected_rewards.tolist() == pytest.approx([-0.25, 0.25])


def test_dpo_needs_preference_pairs(make_job) -> None:
    """`method.objective: dpo` on data prepared without rejected answers: refused before any
    training, naming the file and what to do."""
    import attrs

    sft_data = make_job().train_data
    job = attrs.evolve(make_job(method__objective="dpo"), train_data=sft_data)
    with pytest.raises(PreferenceDataError) as refused:
        TorchTrainer().train(job, emit=lambda event: None, should_stop=lambda: False)
    message = str(refused.value)
    assert str(sft_data) in message
    assert "method.objective: dpo trains on preference pairs" in message
    assert "ft dataset prepare" in message and "method.objective: sft" in message
