"""Validation loss of a model (optionally with an adapter) on a prepared dataset, computed
exactly as the trainer's evaluation does (summed target cross-entropy over the trained tokens,
divided by their count), so a base model's figure and a run's `eval` events compare."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import torch

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_train_torch.device import pick_device
from ft_train_torch.packing import causal_lm_loss, model_inputs, trained_tokens


@attrs.frozen
class LossResult:
    loss: float
    perplexity: float
    tokens: int
    examples: int


def load_for_eval(
    model_path: str | Path,
    adapter: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The causal LM at `model_path` with the PEFT adapter (or full model folder) `adapter`."""
    import transformers

    adapter_path = Path(adapter) if adapter else None
    if adapter_path is not None and not (adapter_path / "adapter_config.json").exists():
        model_path, adapter_path = adapter_path, None  # a full fine-tune saves a whole model
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_path, dtype=dtype, attn_implementation="sdpa"
    )
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    return model.to(pick_device(device)).eval()


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
    dtype = next(model.parameters()).dtype
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
        )
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in batches.iter_from(0, epochs=1):
                inputs = model_inputs(batch, device, dtype=dtype)
                logits = model(**inputs).logits
                total += float(causal_lm_loss(logits, batch))
                count += trained_tokens(batch)
        examples = len(data)
    loss = total / count if count else math.nan
    return LossResult(loss, math.exp(min(loss, 50.0)), count, examples)
