"""The trainable model of each method on an mlx-lm model, and how its weights are saved.

| method | what trains | saved as |
| --- | --- | --- |
| `lora` | mlx-lm's `LoRALinear` on `target_modules` | PEFT layout |
| `dora` | mlx-lm's `DoRALinear` (LoRA plus a magnitude per output row) | PEFT layout |
| `qlora` | LoRA over a base quantized by `mlx.nn.quantize` (4 or 8 bits) | PEFT layout |
| `full` | every weight | safetensors + config + tokenizer (the base folder's layout) |

PEFT's names and shapes: mlx-lm keeps `lora_a` as (in, r) and `lora_b` as (r, out), for `x @ a @ b`;
peft's `lora_A.weight` is (r, in) and `lora_B.weight` (out, r), nn.Linear's (out, in). So each is
transposed, under `base_model.model.<module path>.lora_A.weight`. DoRA's magnitude `m` is peft's
`lora_magnitude_vector`. The scale: mlx-lm multiplies by `scale`; peft by `lora_alpha / r`
(`/ sqrt(r)` with rsLoRA), so ft sets `scale` to that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ft_config import MethodConfig
from ft_models.checkpoint import staged_folder

METHODS = ("lora", "dora", "qlora", "full")
ADAPTER_METHODS = ("lora", "dora", "qlora")
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
FT_ADAPTER = "ft_adapter.json"  # what peft's config has no key for (peft warns on unknown keys)
MLX_LM_WEIGHTS = "adapters.safetensors"
FULL_WEIGHTS = "model.safetensors"
PEFT_PREFIX = "base_model.model."
# mlx-lm module paths that transformers names differently (first prefix -> second).
HF_PREFIX = {"gpt2": ("model.", "transformer."), "gptj": ("model.", "transformer.")}


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


def lora_scale(method: MethodConfig) -> float:
    """peft's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return method.alpha / (math.sqrt(method.rank) if method.rslora else method.rank)


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
    replaced = [
        (
            path,
            layer.from_base(
                modules[path], r=method.rank, dropout=method.dropout, scale=lora_scale(method)
            ),
        )
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


def _hf_path(path: str, model_type: str) -> str:
    old, new = HF_PREFIX.get(model_type, ("", ""))
    return new + path.removeprefix(old) if old and path.startswith(old) else path


def _mlx_path(path: str, model_type: str) -> str:
    old, new = HF_PREFIX.get(model_type, ("", ""))
    return old + path.removeprefix(new) if new and path.startswith(new) else path


def peft_tensors(model: nn.Module, model_type: str) -> dict[str, mx.array]:
    """The adapter's tensors under PEFT's names and in its shapes."""
    out: dict[str, mx.array] = {}
    for name, value in tree_flatten(model.trainable_parameters()):
        path, leaf = name.rsplit(".", 1)
        key = PEFT_PREFIX + _hf_path(path, model_type)
        if leaf == "lora_a":
            out[f"{key}.lora_A.weight"] = value.T
        elif leaf == "lora_b":
            out[f"{key}.lora_B.weight"] = value.T
        elif leaf == "m":
            out[f"{key}.lora_magnitude_vector"] = value
        else:
            raise ValueError(f"{name}: a trainable tensor PEFT's layout has no place for")
    return {k: mx.contiguous(v) for k, v in out.items()}


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
    """Put an adapter saved in PEFT's layout back into `model` (adapted the same way), exactly."""
    tensors = mx.load(str(Path(folder) / PEFT_WEIGHTS))
    trainable = dict(tree_flatten(model.trainable_parameters()))
    weights = []
    for key, value in tensors.items():
        body = _mlx_path(key.removeprefix(PEFT_PREFIX), model_type)
        if body.endswith(".lora_A.weight"):
            name, value = body.removesuffix(".lora_A.weight") + ".lora_a", value.T
        elif body.endswith(".lora_B.weight"):
            name, value = body.removesuffix(".lora_B.weight") + ".lora_b", value.T
        elif body.endswith(".lora_magnitude_vector"):
            name = body.removesuffix(".lora_magnitude_vector") + ".m"
        else:
            name = body
        if name not in trainable:
            raise ValueError(
                f"{folder}: adapter tensor {key} has no place in this model: was it trained "
                "with other method.target_modules or another base model?"
            )
        weights.append((name, mx.contiguous(value)))
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
    `mlx_lm.load(model, adapter_path=output)` and `mlx_lm.fuse` read.

    `num_layers` is mlx-lm's count of adapted blocks (from the last); default: counted from the
    tensor names. Only llama-style module names (`model.layers.N...`) map one to one.
    """
    peft_dir, output = Path(peft_dir), Path(output)
    config = json.loads((peft_dir / PEFT_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{peft_dir}: a {config.get('peft_type')} adapter; mlx-lm reads LoRA/DoRA only"
        )
    tensors = mx.load(str(peft_dir / PEFT_WEIGHTS))
    out: dict[str, mx.array] = {}
    layers: set[int] = set()
    for key, value in tensors.items():
        body = key.removeprefix(PEFT_PREFIX)
        for suffix, leaf, transpose in (
            (".lora_A.weight", ".lora_a", True),
            (".lora_B.weight", ".lora_b", True),
            (".lora_magnitude_vector", ".m", False),
        ):
            if body.endswith(suffix):
                path = body.removesuffix(suffix)
                out[path + leaf] = mx.contiguous(value.T if transpose else value)
                parts = path.split(".")
                if "layers" in parts and parts[parts.index("layers") + 1].isdigit():
                    layers.add(int(parts[parts.index("layers") + 1]))
                break
        else:
            raise ValueError(f"{peft_dir}: tensor {key} is not a LoRA tensor mlx-lm knows")
    rank = int(config["r"])
    scale = float(config["lora_alpha"]) / (math.sqrt(rank) if config.get("use_rslora") else rank)
    keys = sorted(
        {name.rsplit(".", 1)[0].split(".layers.", 1)[-1].split(".", 1)[-1] for name in out}
    )
    mlx_config = {
        "fine_tune_type": "dora" if config.get("use_dora") else "lora",
        "num_layers": num_layers if num_layers is not None else (max(layers) + 1 if layers else -1),
        "lora_parameters": {
            "rank": rank,
            "scale": scale,
            "dropout": float(config.get("lora_dropout", 0.0)),
            "keys": keys,
        },
    }
    output.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(output / MLX_LM_WEIGHTS), out, metadata={"format": "mlx"})
    (output / "adapter_config.json").write_text(
        json.dumps(mlx_config, indent=2) + "\n", encoding="utf-8"
    )
    return output
