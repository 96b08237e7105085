"""The trainable model of each method on an mlx-lm model, and how its weights are saved.

| method | what trains | saved as |
| --- | --- | --- |
| `lora` | mlx-lm's `LoRALinear` on `target_modules` | PEFT layout |
| `dora` | mlx-lm's `DoRALinear` (LoRA plus a magnitude per output row) | PEFT layout |
| `qlora` | LoRA over a base quantized by `mlx.nn.quantize` (4 or 8 bits) | PEFT layout |
| `full` | every weight | safetensors + config + tokenizer (the base folder's layout) |

PEFT's names and shapes, and the scale, are `ft_models.adapters`' (`to_peft`, `to_mlx_lm`,
`lora_scale`): mlx-lm's `lora_a`/`lora_b` are peft's `lora_A.weight`/`lora_B.weight` transposed,
DoRA's `m` is peft's `lora_magnitude_vector` as it is, and mlx-lm's `scale` is peft's
`lora_alpha / r` (`/ sqrt(r)` with rsLoRA). The same module converts adapters for export and
generation, and its tests check the result against peft's own logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ft_config import MethodConfig
from ft_models.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    lora_scale,
    read_adapter_tensors,
    save_mlx_lm_adapter,
    to_mlx_lm,
    to_peft,
)
from ft_models.checkpoint import staged_folder

METHODS = ("lora", "dora", "qlora", "full")
ADAPTER_METHODS = ("lora", "dora", "qlora")
PEFT_WEIGHTS = ADAPTER_WEIGHTS
PEFT_CONFIG = ADAPTER_CONFIG
FT_ADAPTER = "ft_adapter.json"  # what peft's config has no key for (peft warns on unknown keys)
FULL_WEIGHTS = "model.safetensors"


def check_method(name: str) -> None:
    if name not in METHODS:
        hint = (
            " (prefix tuning and P-tuning are torch only: set training.backend: torch)"
            if name in ("prefix", "p-tuning")
            else ""
        )
        raise ValueError(
            f"method {name!r} is not available on MLX{hint}: choose one of {', '.join(METHODS)}"
        )


def _linear_paths(model: nn.Module) -> dict[str, nn.Module]:
    return {
        path: module
        for path, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.QuantizedLinear)
    }


def target_paths(model: nn.Module, targets: str | list[str]) -> list[str]:
    """The module paths that get adapters, as peft picks them: `all-linear` is every linear
    layer but the output head; a list matches a path's last name (or a dotted suffix)."""
    linear = _linear_paths(model)
    if targets == "all-linear":
        chosen = [p for p in linear if p.rsplit(".", 1)[-1] != "lm_head"]
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        chosen = [p for p in linear if any(p == n or p.endswith("." + n) for n in names)]
    if not chosen:
        leaves = sorted({p.rsplit(".", 1)[-1] for p in linear})
        raise ValueError(
            f"method.target_modules {targets!r} matches no linear layer of this model: "
            f"its linear layers are {', '.join(leaves)} (or use all-linear)"
        )
    return sorted(chosen, key=_natural)


def _natural(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in path.split(".")]


def quantize_base(model: nn.Module, bits: int) -> None:
    """QLoRA's base: every linear layer but the output head quantized to `bits` (group 64, or
    32 where the width does not divide by 64)."""

    def group(module: nn.Module) -> int | None:
        width = module.weight.shape[1]
        return 64 if width % 64 == 0 else 32 if width % 32 == 0 else None

    for path, module in _linear_paths(model).items():
        if path.rsplit(".", 1)[-1] == "lm_head" or not isinstance(module, nn.Linear):
            continue
        size = group(module)
        if size is None:
            continue
        quantized = nn.QuantizedLinear.from_linear(module, group_size=size, bits=bits)
        model.update_modules(tree_unflatten([(path, quantized)]))


def apply_method(model: nn.Module, method: MethodConfig) -> list[str]:
    """Make `model` trainable for `method` in place; returns the adapted module paths (empty
    for full fine-tuning). LoRA weights are drawn from MLX's global random state: seed it first."""
    check_method(method.name)
    if method.name == "full":
        model.unfreeze()
        return []
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    if method.name == "qlora":
        quantize_base(model, method.quant_bits)
    model.freeze()
    paths = target_paths(model, method.target_modules)
    modules = dict(model.named_modules())
    layer = DoRALinear if method.name == "dora" else LoRALinear
    scale = lora_scale(method.rank, method.alpha, rslora=method.rslora)
    replaced = [
        (path, layer.from_base(modules[path], r=method.rank, dropout=method.dropout, scale=scale))
        for path in paths
    ]
    model.update_modules(tree_unflatten(replaced))
    return paths


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a quantized weight counts its packed elements as
    `32 / bits` values each, as peft counts a 4-bit weight."""

    def size(tree: Any) -> int:
        total = 0
        for name, value in tree_flatten(tree):
            if name.endswith((".scales", ".biases")) and _is_quantized_parent(model, name):
                continue
            count = value.size
            if value.dtype == mx.uint32 and name.endswith(".weight"):
                bits = getattr(_module_of(model, name), "bits", 32)
                count = count * 32 // bits
            total += count
        return total

    return size(model.trainable_parameters()), size(model.parameters())


def _module_of(model: nn.Module, name: str) -> Any:
    path = name.rsplit(".", 1)[0]
    return dict(model.named_modules()).get(path)


def _is_quantized_parent(model: nn.Module, name: str) -> bool:
    return isinstance(_module_of(model, name), nn.QuantizedLinear)


# -- PEFT layout -----------------------------------------------------------------------------


def peft_tensors(model: nn.Module, model_type: str) -> dict[str, mx.array]:
    """The adapter's tensors under PEFT's names and in its shapes."""
    tensors = to_peft(dict(tree_flatten(model.trainable_parameters())), model_type)
    return {k: mx.contiguous(v) for k, v in tensors.items()}


def peft_config(
    method: MethodConfig, paths: list[str], model_path: Path, model_type: str
) -> dict[str, Any]:
    """adapter_config.json of a LoRA/DoRA adapter, as peft's LoraConfig writes it."""
    targets = sorted({p.rsplit(".", 1)[-1] for p in paths})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_path),
        "r": method.rank,
        "lora_alpha": method.alpha,
        "lora_dropout": method.dropout,
        "target_modules": targets,
        "use_rslora": method.rslora,
        "use_dora": method.name == "dora",
        "bias": "none",
        "fan_in_fan_out": model_type == "gpt2",  # transformers' GPT-2 uses Conv1D
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "revision": None,
    }


def load_peft_tensors(model: nn.Module, folder: Path, model_type: str) -> None:
    """Put an adapter saved in PEFT's layout back into `model` (adapted the same way), exactly:
    each tensor in the dtype of the parameter it replaces (read as float32, which holds
    bfloat16 and float16 values exactly)."""
    tensors = to_mlx_lm(read_adapter_tensors(folder), model_type, folder)
    trainable = dict(tree_flatten(model.trainable_parameters()))
    weights = []
    for name, value in tensors.items():
        if name not in trainable:
            raise ValueError(
                f"{folder}: adapter tensor {name} has no place in this model: was it trained "
                "with other method.target_modules or another base model?"
            )
        weights.append((name, mx.array(value).astype(trainable[name].dtype)))
    model.update(tree_unflatten(weights))


# -- saving -----------------------------------------------------------------------------------


def save_weights(
    model: nn.Module,
    folder: Path,
    method: MethodConfig,
    paths: list[str],
    model_path: Path,
    model_type: str,
) -> None:
    """Write the trained weights into `folder`: the adapter in PEFT's layout, or (full) every
    weight with the base folder's config and tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    if method.name in ADAPTER_METHODS:
        tensors = peft_tensors(model, model_type)
        mx.eval(tensors)
        mx.save_safetensors(str(folder / PEFT_WEIGHTS), tensors, metadata={"format": "pt"})
        config = peft_config(method, paths, model_path, model_type)
        (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        extra = {"backend": "mlx", "method": method.name, "quant_bits": method.quant_bits}
        (folder / FT_ADAPTER).write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
        return
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    mx.save_safetensors(str(folder / FULL_WEIGHTS), weights, metadata={"format": "mlx"})
    from ft_models.load import copy_tokenizer_files, mlx_config_overrides, read_config

    base = read_config(model_path)
    config = {**base, **mlx_config_overrides(base)}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    copy_tokenizer_files(Path(model_path), folder)


def load_weights(model: nn.Module, folder: Path, method: MethodConfig, model_type: str) -> None:
    """Put back what `save_weights` wrote, bit for bit."""
    if method.name in ADAPTER_METHODS:
        load_peft_tensors(model, folder, model_type)
    else:
        model.load_weights(str(Path(folder) / FULL_WEIGHTS), strict=True)


def save_final(
    model: nn.Module,
    final: Path,
    method: MethodConfig,
    paths: list[str],
    model_path: Path,
    model_type: str,
) -> Path:
    """Save the result into `final` whole or not at all (`ft_models.checkpoint.staged_folder`)."""
    with staged_folder(final) as build:
        save_weights(model, build, method, paths, model_path, model_type)
    return final


# -- mlx-lm's adapter layout (an export option) -----------------------------------------------


def peft_to_mlx_lm(peft_dir: Path, output: Path, *, num_layers: int | None = None) -> Path:
    """Write the PEFT adapter in `peft_dir` (LoRA or DoRA, saved by either ft backend) in
    mlx-lm's layout: `adapters.safetensors` + `adapter_config.json`, which
    `mlx_lm.load(model, adapter_path=output)` and `mlx_lm.fuse` read
    (`ft_models.adapters.save_mlx_lm_adapter`).

    `num_layers` is mlx-lm's count of adapted blocks (from the last); default: from the first
    adapted block on, counted in the config of the base model the adapter names.
    """
    return save_mlx_lm_adapter(peft_dir, output, num_layers=num_layers)
