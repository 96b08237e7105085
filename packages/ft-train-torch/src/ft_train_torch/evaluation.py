"""Validation loss of a model (optionally with an adapter) on a prepared dataset, computed
exactly as the trainer's evaluation does (summed target cross-entropy over the trained tokens,
divided by their count), so a base model's figure and a run's `eval` events compare.

For a sequence classifier, `evaluate_classification` gives the mean loss per example and each
example's predicted and true class by name (accuracy and F1 are computed from them by the
caller, e.g. ft-runs' `classification_metrics`)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_train_core.preference import evaluation_pairs, pair_layout
from ft_train_core.protocol import ClassificationResult, LossResult, PreferenceResult
from ft_train_torch.attention import register as register_attention
from ft_train_torch.device import pick_device
from ft_train_torch.methods import read_classes
from ft_train_torch.packing import (
    OutputAtTargets,
    causal_lm_loss,
    classification_loss,
    model_inputs,
    selected_lm_loss,
    selected_token_losses,
    trained_positions,
    trained_tokens,
    use_packed_attention,
)


def load_for_eval(
    model_path: str | Path,
    adapter: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
    task: str = "causal-lm",
) -> torch.nn.Module:
    """The model at `model_path` with the PEFT adapter (or full model folder) `adapter`: a
    causal LM, or (`task="sequence-classification"`) a sequence classifier whose head and
    classes come from the adapter (its `classes.json`) or the full model's config."""
    import transformers

    adapter_path = Path(adapter) if adapter else None
    if adapter_path is not None and not (adapter_path / "adapter_config.json").exists():
        model_path, adapter_path = adapter_path, None  # a full fine-tune saves a whole model
    if task == "sequence-classification":
        kwargs: dict[str, object] = {}
        classes = read_classes(adapter_path) if adapter_path is not None else None
        if classes is not None:
            kwargs["id2label"] = classes["id2label"]
            kwargs["label2id"] = {name: i for i, name in classes["id2label"].items()}
            if classes.get("pad_token_id") is not None:
                kwargs["pad_token_id"] = classes["pad_token_id"]
            kwargs["ignore_mismatched_sizes"] = True  # the adapter brings the trained head
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*newly initialized.*")
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                model_path, dtype=dtype, attn_implementation="sdpa", **kwargs
            )
    else:
        # ft's per-example attention (packed rows cost memory linear in their length), but
        # for prompt-learning adapters, whose virtual tokens need SDPA's 2D padding mask.
        attention = "sdpa" if _is_prompt_learning(adapter_path) else register_attention()
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, attn_implementation=attention
        )
    if adapter_path is not None:
        from peft import PeftModel

        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing`: not the user's concern.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = PeftModel.from_pretrained(model, adapter_path)
    return model.to(pick_device(device)).eval()


def _is_prompt_learning(adapter: Path | None) -> bool:
    """Whether `adapter` is a peft prefix-tuning or P-tuning adapter (virtual tokens)."""
    if adapter is None:
        return False
    import json

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    return config.get("peft_type") in ("PREFIX_TUNING", "P_TUNING", "PROMPT_TUNING")


def evaluate_loss(
    model: torch.nn.Module,
    dataset: str | Path,
    *,
    batch_size: int = 4,
    max_seq_length: int = 2048,
    packing: bool = True,
) -> LossResult:
    """Mean loss per trained token of `model` over every example of the prepared `dataset`."""
    device = next(model.parameters()).device
    with PreparedDataset(dataset) as data:
        if not len(data):
            raise ValueError(f"{dataset}: the dataset has no examples to evaluate on")
        longest = int(data.lengths.max())
        mode = "pack" if packing and longest <= max_seq_length else "pad"
        batches = Batches(
            data,
            batch_size=batch_size,
            max_seq_length=max(max_seq_length, longest) if mode == "pad" else max_seq_length,
            mode=mode,
            seed=0,
            shuffle=False,
            pad_multiple=64,  # fewer shapes: see ft_train_torch.trainer.PAD_MULTIPLE
        )
        total, count = 0.0, 0
        # Logits at the answer tokens only, as in training (not with prompt-learning adapters,
        # whose virtual tokens shift the positions).
        config = getattr(model, "peft_config", {}).get("default")
        output = None if getattr(config, "is_prompt_learning", False) else OutputAtTargets(model)
        if output is not None:
            # Whatever attention the caller loaded the model with: packed rows need ft's
            # per-example attention, or examples would see each other.
            use_packed_attention(model)
        try:
            with torch.no_grad():
                for batch in batches.iter_from(0, epochs=1):
                    inputs = model_inputs(batch, device, prompt_learning=output is None)
                    if output is None:
                        total += float(causal_lm_loss(model(**inputs).logits, batch))
                    else:
                        with output.at(trained_positions(batch), device):
                            logits = model(**inputs).logits
                        total += float(selected_lm_loss(logits, batch))
                    count += trained_tokens(batch)
        finally:
            if output is not None:
                output.remove()
        examples = len(data)
    loss = total / count if count else math.nan
    return LossResult(loss, math.exp(min(loss, 50.0)), count, examples)


def evaluate_classification(
    model: torch.nn.Module, dataset: str | Path, *, batch_size: int = 8
) -> ClassificationResult:
    """Loss per example, predictions and labels of the sequence classifier `model` over every
    example of the prepared classification `dataset`. Classes are matched by name, so data
    prepared on its own (its classes numbered among themselves) scores correctly; a class the
    model does not know is an error."""
    device = next(model.parameters()).device
    id2label = {int(i): str(n) for i, n in model.config.id2label.items()}
    names = [id2label[i] for i in range(len(id2label))]
    index = {name: i for i, name in enumerate(names)}
    pad_id = model.config.pad_token_id
    with PreparedDataset(dataset) as data:
        classes, data_names = data.labels(), data.label_names
        if classes is None or not data_names:
            raise ValueError(
                f"{dataset}: the dataset has no labels to score a classifier against: prepare "
                "it with the run's data.label_column"
            )
        if not len(data):
            raise ValueError(f"{dataset}: the dataset has no examples to evaluate on")
        unknown = sorted(set(data_names) - set(names))
        if unknown:
            raise ValueError(
                f"{dataset}: classes the model was not trained on: {', '.join(unknown)} "
                f"(it knows {', '.join(names)})"
            )
        to_model = np.asarray([index[name] for name in data_names], dtype=np.int64)
        batches = Batches(
            data,
            batch_size=batch_size,
            max_seq_length=int(data.lengths.max()),
            mode="pad",
            seed=0,
            shuffle=False,
            pad_id=pad_id if isinstance(pad_id, int) and pad_id >= 0 else None,
        )
        total, predictions, labels = 0.0, [], []
        with torch.no_grad():
            for batch in batches.iter_from(0, epochs=1):
                batch = {**batch, "labels": to_model[batch["labels"]]}
                inputs = model_inputs(batch, device, task="sequence-classification")
                logits = model(**inputs).logits
                total += float(classification_loss(logits, batch))
                predictions += [names[i] for i in logits.argmax(-1).tolist()]
                labels += [names[i] for i in batch["labels"].tolist()]
    return ClassificationResult(total / len(labels), predictions, labels, names)


def evaluate_preference(
    model: torch.nn.Module, dataset: str | Path, *, batch_size: int = 4
) -> PreferenceResult:
    """Each pair's summed log-probability of its chosen and of its rejected answer under
    `model`, over the preference pairs of the prepared `dataset`, batched as the trainer
    batches pairs (`ft_train_core.preference`: both sides in one row, attending apart)."""
    from ft_train_torch.preference import pair_logps

    device = next(model.parameters()).device
    with PreparedDataset(dataset) as data:
        chosen, rejected = np.zeros(len(data)), np.zeros(len(data))
        chosen_tokens = np.zeros(len(data), np.int64)
        rejected_tokens = np.zeros(len(data), np.int64)
        batches = evaluation_pairs(data, dataset, batch_size, pad_multiple=64)
        output = OutputAtTargets(model)
        use_packed_attention(model)
        try:
            with torch.no_grad():
                for batch in batches.iter_from(0, epochs=1):
                    layout = pair_layout(batch)
                    with output.at(trained_positions(batch), device):
                        logits = model(**model_inputs(batch, device)).logits
                    sums = pair_logps(-selected_token_losses(logits, batch), layout)
                    ids = layout.pair_ids
                    chosen[ids], rejected[ids] = (side.double().cpu().numpy() for side in sums)
                    chosen_tokens[ids] = layout.chosen_tokens
                    rejected_tokens[ids] = layout.rejected_tokens
        finally:
            output.remove()
    return PreferenceResult(
        chosen.tolist(), rejected.tolist(), chosen_tokens.tolist(), rejected_tokens.tolist()
    )
