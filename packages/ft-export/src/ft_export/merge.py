"""Load a base model, apply (and combine) PEFT adapters, and merge them into the weights.

Everything happens in float32 on the CPU: merging `W + s * B @ A` in half precision would round
the (small) update away. The merged model is cast to the asked dtype only when it is saved.
torch, transformers and peft are imported inside the functions (the `torch` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_export.types import ExportError, ExportSource
from ft_models.adapters import AdapterConfig, AdapterError, read_adapter_config

COMBINATIONS = ("linear", "ties", "dare_ties", "dare_linear", "cat", "svd", "magnitude_prune")
"""peft's `add_weighted_adapter` combination types."""

_PROMPT_TYPES = {"PREFIX_TUNING", "P_TUNING", "PROMPT_TUNING"}


def import_torch() -> tuple[Any, Any, Any]:
    try:
        import peft
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(
            f"merging and checking exports needs torch, transformers and peft ({error.name} is "
            'missing): pip install "ft-export[torch]"'
        ) from error
    return torch, transformers, peft


def adapter_config(folder: Path) -> AdapterConfig:
    """The config of the PEFT adapter in `folder` (`ft_models.adapters`), as an ExportError
    that says which folder to pass when it is not one."""
    try:
        return read_adapter_config(folder)
    except AdapterError as error:
        raise ExportError(
            f"{error}; pass the folder the trainer wrote (a run's adapter/ or a checkpoint)"
        ) from None


def load_base(path: Path) -> Any:
    """The base model in float32, in evaluation mode."""
    torch, transformers, _ = import_torch()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def load_tokenizer(source: ExportSource) -> Any:
    """The tokenizer of the export, with the chat template used in training."""
    _, transformers, _ = import_torch()
    folder = source.base
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if source.chat_template is not None:
        tokenizer.chat_template = source.chat_template
    return tokenizer


def with_adapters(base: Any, source: ExportSource) -> tuple[Any, list[str]]:
    """`base` wrapped by peft with the source's adapters (combined into one when several), and
    notes for the user. With no adapters, `base` itself."""
    _, _, peft = import_torch()
    notes: list[str] = []
    if not source.adapters:
        return base, notes
    for folder in source.adapters:
        config = adapter_config(folder)
        if config.peft_type in _PROMPT_TYPES:
            raise ExportError(
                f"{folder} is a {config.peft_type} adapter: it adds virtual tokens instead of "
                "changing weights, so it cannot be merged; export it with --format peft"
            )
    names = [f"adapter{i}" for i in range(len(source.adapters))]
    model = peft.PeftModel.from_pretrained(base, source.adapters[0], adapter_name=names[0])
    for name, folder in zip(names[1:], source.adapters[1:], strict=True):
        model.load_adapter(folder, adapter_name=name)
    if len(names) > 1:
        if source.combination not in COMBINATIONS:
            raise ExportError(
                f"unknown adapter combination {source.combination!r}: choose one of "
                f"{', '.join(COMBINATIONS)}"
            )
        weights = list(source.adapter_weights or [1 / len(names)] * len(names))
        if len(weights) != len(names):
            raise ExportError(
                f"{len(weights)} weights for {len(names)} adapters: give one weight per adapter"
            )
        kwargs: dict[str, Any] = {}
        if source.combination in ("ties", "dare_ties", "dare_linear", "magnitude_prune"):
            kwargs["density"] = source.density
        try:
            model.add_weighted_adapter(
                names, weights, "combined", combination_type=source.combination, **kwargs
            )
        except ValueError as error:
            raise ExportError(f"peft cannot combine these adapters: {error}") from None
        model.set_adapter("combined")
        for name in names:
            model.delete_adapter(name)
        notes.append(
            f"combined {len(names)} adapters with {source.combination} "
            f"(weights {', '.join(f'{w:g}' for w in weights)}"
            + (f", density {source.density:g})" if "density" in kwargs else ")")
        )
    if source.quantized_base:
        notes.append(
            "the adapter was trained on a 4-bit (QLoRA) base; it is merged into the "
            "full-precision (dequantized) weights of the base model"
        )
    return model.eval(), notes


def merged_model(source: ExportSource) -> tuple[Any, list[str]]:
    """ft's own merged model (float32): base + adapters, merged. Returns (model, notes)."""
    base = load_base(source.base)
    model, notes = with_adapters(base, source)
    if model is base:
        return base, notes
    merged = model.merge_and_unload()
    return merged.eval(), notes


def save_hf(model: Any, tokenizer: Any, out: Path, dtype: str, max_shard_size: str) -> None:
    """Save `model` in `dtype` as a safetensors folder (sharded above `max_shard_size`) with
    its tokenizer and chat template. `model` itself is left in float32."""
    from ft_config import atomic_write_text

    torch_dtype = torch_dtype_of(dtype)
    state = {k: v.to(torch_dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(
        out, state_dict=state, safe_serialization=True, max_shard_size=max_shard_size
    )
    # transformers records the dtype of the model in memory (float32); say what was saved
    config_file = out / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["dtype"] = str(torch_dtype).removeprefix("torch.")
    atomic_write_text(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out)


def saved_dtype(folder: Path) -> str:
    """The dtype a model folder's weights are saved in (its config's `dtype`/`torch_dtype`),
    float32 when it does not say or says something ft does not export."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def torch_dtype_of(dtype: str) -> Any:
    torch, _, _ = import_torch()
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    aliases = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16"}
    aliases.update({"bf16": "bfloat16"})
    key = aliases.get(dtype, dtype)
    if key not in table:
        raise ExportError(f"unknown dtype {dtype!r}: choose float32, float16 or bfloat16")
    return table[key]
