"""Generation on MLX: an mlx-lm model run one step at a time against its prompt cache, and a
PEFT adapter merged into its weights (`ft_models.adapters.merged_weight`: LoRA and DoRA, as
peft merges them). mlx and mlx-lm are imported inside the functions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ft_models.generation.options import GenerationError, adapter_errors

PREFILL_CHUNK = 512
"""How many prompt tokens MLX runs through the model at once: bounds the prefill's memory."""


class MlxLM:
    """An mlx-lm model run one step at a time against its prompt cache."""

    backend = "mlx"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        import mlx.core as mx

        logits = self.model(mx.array([list(ids)]), cache=self.cache)[0, -1]
        return np.array(logits.astype(mx.float32))

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        self.cache = make_prompt_cache(self.model)
        ids = list(prompt_ids)
        while len(ids) > PREFILL_CHUNK:
            self.model(mx.array([ids[:PREFILL_CHUNK]]), cache=self.cache)
            mx.eval([c.state for c in self.cache])
            ids = ids[PREFILL_CHUNK:]
        return self._forward(ids)

    def step(self, token: int) -> np.ndarray:
        return self._forward([token])


def merge_adapter_mlx(model: Any, folder: Path) -> int:
    """Merge the PEFT LoRA or DoRA adapter in `folder` into an mlx-lm model's weights, in
    float32 (`ft_models.adapters.merged_weight`, each module at its own scale); return how many
    weight matrices changed. Raises GenerationError for a tensor it has no place for."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from ft_models.adapters import (
        adapted_modules,
        merged_weight,
        mlx_module_path,
        read_adapter_config,
        read_adapter_tensors,
    )

    folder = Path(folder)
    with adapter_errors():
        config = read_adapter_config(folder)
        if not config.is_lora:
            raise GenerationError(
                f"adapter {folder} is a {config.peft_type} adapter; ft generates with LoRA "
                "adapters only. Merge it into the model with peft, or export the run with "
                "`ft export`."
            )
        tensors = read_adapter_tensors(folder)
        modules = adapted_modules(tensors, folder, strict=True)
    params = dict(tree_flatten(model.parameters()))
    model_type = str(getattr(model, "model_type", ""))
    updates = []
    for module, roles in sorted(modules.items()):
        target = f"{mlx_module_path(module, model_type)}.weight"
        if target not in params:
            raise GenerationError(
                f"adapter {folder} adapts {module}, which this model does not have: "
                "was it trained on another base model?"
            )
        # B @ A is (out, in), the layout of every MLX Linear weight (peft's fan_in_fan_out only
        # concerns transformers' Conv1D storage, which mlx-lm transposes on load).
        a, b = tensors[roles["A"]], tensors[roles["B"]]
        weight = params[target]
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise GenerationError(
                f"adapter {folder}: {module} is {(b.shape[0], a.shape[1])} in the adapter but "
                f"{tuple(weight.shape)} in the model: was it trained on another base model?"
            )
        magnitude = tensors[roles["magnitude"]] if "magnitude" in roles else None
        merged = merged_weight(
            np.array(weight.astype(mx.float32)), a, b, config.scale_of(module), magnitude
        )
        updates.append((target, mx.array(merged).astype(weight.dtype)))
    model.load_weights(updates, strict=False)
    mx.eval(model.parameters())
    return len(updates)


__all__ = ["PREFILL_CHUNK", "MlxLM", "merge_adapter_mlx"]
