"""Validation loss of a model (optionally with an adapter) on a prepared dataset, computed
exactly as the MLX trainer's evaluation does (summed target cross-entropy over the trained
tokens, divided by their count), so `ft evaluate` works where MLX is the only backend."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx

from ft_data.batches import Batches, target_count
from ft_data.hdf5 import PreparedDataset
from ft_train_core.protocol import LossResult, PreferenceResult
from ft_train_mlx.packing import ABSOLUTE_POSITIONS, model_inputs, summed_loss


def evaluate_loss(
    model_path: Path,
    adapter: Path | None,
    dataset: Path,
    *,
    max_seq_length: int = 2048,
    batch_size: int = 4,
    device: str = "auto",
) -> LossResult:
    """Mean loss per trained token of the model at `model_path` (with the PEFT adapter folder
    `adapter`, or a full fine-tune's folder in its place) over every example of `dataset`."""
    from ft_models.load import load_mlx, read_config
    from ft_train_mlx.api import load_adapted
    from ft_train_mlx.device import on_device, pick_device

    with on_device(pick_device(device)):
        if adapter is not None and (Path(adapter) / "adapter_config.json").is_file():
            model, _ = load_adapted(model_path, adapter)
        else:
            model, _ = load_mlx(Path(adapter or model_path), dtype="float32")
        model.eval()
        total, count = 0.0, 0
        with PreparedDataset(dataset) as data:
            if not len(data):
                raise ValueError(f"{dataset}: the dataset has no examples to evaluate on")
            longest = int(data.lengths.max())
            # Packed rows put examples at later positions: only models whose positions are
            # relative (RoPE) compute the same there; GPT-2's learned ones do not.
            model_type = str(read_config(Path(model_path)).get("model_type", ""))
            packed = longest <= max_seq_length and model_type not in ABSOLUTE_POSITIONS
            batches = Batches(
                data,
                batch_size=batch_size,
                max_seq_length=max_seq_length if packed else longest,
                mode="pack" if packed else "pad",
                seed=0,
                shuffle=False,
            )
            for batch in batches.iter_from(0, epochs=1):
                loss = summed_loss(model, *model_inputs(batch))
                mx.eval(loss)
                total += float(loss.item())
                count += target_count(batch)
            examples = len(data)
    loss = total / count if count else math.nan
    return LossResult(loss, math.exp(min(loss, 50.0)), count, examples)


def evaluate_preference(
    model_path: Path,
    adapter: Path | None,
    dataset: Path,
    *,
    batch_size: int = 4,
    device: str = "auto",
) -> PreferenceResult:
    """Each pair's summed log-probability of its chosen and of its rejected answer under the
    model at `model_path` (with the adapter, or a full fine-tune's folder), over the preference
    pairs of `dataset`, batched as the trainer batches pairs."""
    import numpy as np

    from ft_models.load import load_mlx
    from ft_train_core.preference import evaluation_pairs, pair_layout
    from ft_train_mlx.api import load_adapted
    from ft_train_mlx.device import on_device, pick_device
    from ft_train_mlx.preference import pair_inputs, pair_logps

    with on_device(pick_device(device)):
        if adapter is not None and (Path(adapter) / "adapter_config.json").is_file():
            model, _ = load_adapted(model_path, adapter)
        else:
            model, _ = load_mlx(Path(adapter or model_path), dtype="float32")
        model.eval()
        with PreparedDataset(dataset) as data:
            chosen, rejected = np.zeros(len(data)), np.zeros(len(data))
            counts = np.zeros((2, len(data)), np.int64)
            batches = evaluation_pairs(data, dataset, batch_size)
            for batch in batches.iter_from(0, epochs=1):
                layout = pair_layout(batch)
                slots, present, count = pair_inputs(batch, layout)
                sums = pair_logps(model, model_inputs(batch), slots, present, count)
                mx.eval(*sums)
                ids = layout.pair_ids
                chosen[ids], rejected[ids] = (np.array(side, dtype=np.float64) for side in sums)
                counts[0, ids], counts[1, ids] = layout.chosen_tokens, layout.rejected_tokens
    return PreferenceResult(
        chosen.tolist(), rejected.tolist(), counts[0].tolist(), counts[1].tolist()
    )
