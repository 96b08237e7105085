"""Generation on torch: a transformers causal LM run one step at a time against its KV cache,
and a PEFT adapter merged in with peft (checked to fit first: peft only warns about tensors it
has no place for). torch, transformers and peft are imported inside the functions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ft_models.generation.options import GenerationError, adapter_errors


class TorchLM:
    """A transformers causal LM run one step at a time against its KV cache."""

    backend = "torch"

    def __init__(self, model: Any) -> None:
        import inspect

        self.model = model
        self.cache: Any = None
        accepted = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name is deprecated).
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        # Only the last position's logits are needed: a long prompt need not make a
        # (length x vocabulary) matrix.
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        inputs = torch.tensor([list(ids)], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = self.model(
                input_ids=inputs, use_cache=True, **{self._cache_arg: self.cache}, **self._extra
            )
        self.cache = getattr(out, self._cache_arg)
        return out.logits[0, -1].float().cpu().numpy()  # type: ignore[no-any-return]

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Read the prompt into a fresh cache; the logits of the token after it."""
        self.cache = None
        return self._forward(prompt_ids)

    def step(self, token: int) -> np.ndarray:
        """Feed one token; the logits of the token after it."""
        return self._forward([token])


def torch_generation_dtype(device: str) -> str:
    # Decoding one token at a time is matrix-vector work: on a CPU, bfloat16 measured about 3x
    # slower than float32 here even with AMX (docs/generation.md), so CPUs get float32.
    from ft_models.device import pick_device

    return "float32" if pick_device(device).device == "cpu" else "auto"


def _check_fits(model: Any, folder: Path) -> None:
    # peft adapts the modules it finds and only warns about tensors it has no place for, so an
    # adapter of another model could load half-applied: check every LoRA pair first, from the
    # shapes in the file's header (no values read).
    from ft_models.adapters import adapted_modules, adapter_weights
    from ft_models.safetensors_io import read_header

    entries = read_header(adapter_weights(folder)).tensors
    modules = adapted_modules(entries, folder, strict=False)
    for module, roles in sorted(modules.items()):
        out_features, in_features = entries[roles["B"]].shape[0], entries[roles["A"]].shape[-1]
        try:
            weight = getattr(model.get_submodule(module), "weight", None)
        except AttributeError:
            weight = None
        if weight is None:
            raise GenerationError(
                f"adapter {folder} adapts {module}, which this model does not have: "
                "was it trained on another base model?"
            )
        # A Linear stores (out, in); transformers' Conv1D (GPT-2) stores (in, out).
        if tuple(weight.shape) not in ((out_features, in_features), (in_features, out_features)):
            raise GenerationError(
                f"adapter {folder}: {module} is {out_features}x{in_features} in the adapter "
                f"but {tuple(weight.shape)} in the model: was it trained on another base model?"
            )


def apply_adapter_torch(model: Any, folder: Path) -> Any:
    """The transformers model with the PEFT adapter in `folder` (LoRA or DoRA) merged in."""
    from ft_models.adapters import read_adapter_config

    folder = Path(folder)
    with adapter_errors():
        config = read_adapter_config(folder)
        if not config.is_lora:
            raise GenerationError(
                f"adapter {folder} is a {config.peft_type} adapter; ft generates with LoRA "
                "adapters only. Merge it into the model with peft, or export the run with "
                "`ft export`."
            )
        _check_fits(model, folder)
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ImportError("applying an adapter on torch needs peft: pip install peft") from error
    try:
        wrapped = PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as error:
        # peft's own words (size mismatch, missing module) after ft's: which adapter, and why.
        raise GenerationError(
            f"adapter {folder} does not fit this model (was it trained on another base "
            f"model?): {str(error).strip().splitlines()[0][:300]}"
        ) from error
    return wrapped.merge_and_unload()


__all__ = ["TorchLM", "apply_adapter_torch", "torch_generation_dtype"]
