"""PEFT LoRA/DoRA adapters, in one place: the folder, its config, its tensors, the scale, the
merged weight, and the conversion to and from mlx-lm's layout.

A PEFT adapter folder holds `adapter_config.json` and `adapter_model.safetensors`, with for
each adapted module M (a transformers module path):

    base_model.model.M.lora_A.weight            A, (r, in)
    base_model.model.M.lora_B.weight            B, (out, r)
    base_model.model.M.lora_magnitude_vector    m, (out,)      DoRA only

peft computes, for an input x (peft/tuners/lora/layer.py and dora.py), with s the scale:

    LoRA:  y = W x + b + s * B A x
    DoRA:  y = m / ||W + s * B A||_rows * (W x + s * B A x) + b

where the norm is taken per output row and held constant in the gradient, and
s = lora_alpha / r, or lora_alpha / sqrt(r) with `use_rslora` (per module under
`rank_pattern`/`alpha_pattern`). mlx-lm's `LoRALinear` and `DoRALinear` (mlx_lm/tuner/lora.py,
dora.py) compute exactly that with `lora_a` = A transposed (in, r), `lora_b` = B transposed
(r, out), `scale` = s and `m` = peft's magnitude as it is. So converting is a rename, two
transposes and nothing else; tests/test_adapters.py checks the converted adapter on MLX
against peft's own logits, for LoRA and DoRA.

Module paths are the same in both but for GPT-2 and GPT-J, whose `transformer.` mlx-lm calls
`model.`. Everything here is numpy (the conversions also take mlx arrays as they are).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ft_models.safetensors_io import SafetensorsError, read_tensors, write_tensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
"""What peft puts before a module path in the adapter's tensor names."""
MLX_LM_WEIGHTS = "adapters.safetensors"
MLX_LM_CONFIG = "adapter_config.json"
MLX_PREFIX = {"gpt2": ("transformer.", "model."), "gptj": ("transformer.", "model.")}
"""model_type -> (transformers' module prefix, mlx-lm's), where the two differ."""

# peft's tensor names, per role (an adapter name may follow the role: `lora_A.default.weight`).
_ROLES = {
    "A": re.compile(r"(.+)\.lora_A(?:\.[^.]+)?\.weight"),
    "B": re.compile(r"(.+)\.lora_B(?:\.[^.]+)?\.weight"),
    "magnitude": re.compile(r"(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?"),
}
# peft role <-> mlx-lm leaf, and whether the matrix is stored transposed.
_MLX_LEAVES = {"A": ("lora_a", True), "B": ("lora_b", True), "magnitude": ("m", False)}


class AdapterError(ValueError):
    """An adapter folder ft cannot read, apply or convert: which folder, what is wrong."""


def lora_scale(rank: int, alpha: float, *, rslora: bool = False) -> float:
    """peft's scale of the update B A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / (math.sqrt(rank) if rslora else rank)


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    # peft's rule for rank_pattern/alpha_pattern: a key matches the tail of a module path.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


@attrs.frozen
class AdapterConfig:
    """The adapter_config.json of a PEFT adapter, with peft's defaults for what it leaves out."""

    folder: Path
    peft_type: str = "LORA"
    """LORA (DoRA is LORA with `dora`), or another peft method (PREFIX_TUNING, ...)."""
    rank: int = 8
    alpha: float = 8.0
    rslora: bool = False
    dora: bool = False
    target_modules: tuple[str, ...] | str | None = None
    """Module names, or one string (`all-linear`, or a regular expression)."""
    base_model: str | None = None
    """`base_model_name_or_path`: the model it was trained on, as the trainer named it."""
    rank_pattern: dict[str, int] = attrs.Factory(dict)
    alpha_pattern: dict[str, float] = attrs.Factory(dict)
    dropout: float = 0.0
    fan_in_fan_out: bool = False
    """True for transformers' Conv1D (GPT-2) base weights, stored (in, out); A and B are not."""
    raw: dict[str, Any] = attrs.Factory(dict)
    """The whole file, for keys not named here."""

    @property
    def is_lora(self) -> bool:
        return self.peft_type == "LORA"

    @property
    def scale(self) -> float:
        """The scale of every module without a pattern of its own."""
        return lora_scale(self.rank, self.alpha, rslora=self.rslora)

    @property
    def uniform(self) -> bool:
        """Whether every module has the same rank and scale (no rank/alpha pattern)."""
        return not self.rank_pattern and not self.alpha_pattern

    def rank_of(self, module: str) -> int:
        return int(_pattern_value(self.rank_pattern, module, self.rank))

    def scale_of(self, module: str) -> float:
        """The scale of `module` (a module path), following rank_pattern and alpha_pattern."""
        alpha = float(_pattern_value(self.alpha_pattern, module, self.alpha))
        return lora_scale(self.rank_of(module), alpha, rslora=self.rslora)


def read_adapter_config(folder: str | Path) -> AdapterConfig:
    """The config of the PEFT adapter in `folder`. Raises AdapterError when `folder` is missing
    or is not an adapter folder (a full model's folder is told apart)."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not folder.is_dir():
        raise AdapterError(f"adapter {folder}: no such folder")
    if not path.is_file():
        hint = (
            " (it holds config.json: it is a full model, give it as the model instead)"
            if (folder / "config.json").is_file()
            else ""
        )
        raise AdapterError(
            f"adapter {folder} has no {ADAPTER_CONFIG}: a PEFT adapter folder holds "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}{hint}"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AdapterError(f"{path} is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path} is not a JSON object")
    targets = raw.get("target_modules")
    try:
        return AdapterConfig(
            folder=folder,
            peft_type=str(raw.get("peft_type") or "LORA").upper(),
            rank=int(raw.get("r", 8)),
            alpha=float(raw.get("lora_alpha", 8)),
            rslora=bool(raw.get("use_rslora")),
            dora=bool(raw.get("use_dora")),
            target_modules=tuple(targets) if isinstance(targets, list) else targets,
            base_model=raw.get("base_model_name_or_path"),
            rank_pattern=dict(raw.get("rank_pattern") or {}),
            alpha_pattern=dict(raw.get("alpha_pattern") or {}),
            dropout=float(raw.get("lora_dropout") or 0.0),
            fan_in_fan_out=bool(raw.get("fan_in_fan_out")),
            raw=raw,
        )
    except (TypeError, ValueError) as error:
        raise AdapterError(f"{path}: a value has the wrong type ({error})") from None


def adapter_weights(folder: str | Path) -> Path:
    """The adapter's `adapter_model.safetensors`. Raises AdapterError when it is missing (and
    says so when only the pickle `adapter_model.bin` is there, which ft never loads)."""
    folder = Path(folder)
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise AdapterError(
            f"adapter {folder} has no {ADAPTER_WEIGHTS}"
            + (" (only adapter_model.bin, a pickle, which ft never loads)" if pickled else "")
        )
    return path


def read_adapter_tensors(folder: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the adapter in `folder`, under peft's names, floats as float32."""
    try:
        return read_tensors(adapter_weights(folder))
    except SafetensorsError as error:
        raise AdapterError(f"adapter {folder}: {error}") from None


def adapted_modules(
    keys: Iterable[str], folder: str | Path, *, strict: bool = True
) -> dict[str, dict[str, str]]:
    """Module path -> {"A": key, "B": key, and "magnitude": key for DoRA} for the tensor names
    `keys` of the adapter in `folder`. Any other tensor (modules_to_save, a bias, embedding
    adapters) is an AdapterError when `strict`, else left out; a module without both its A and
    B is always one."""
    modules: dict[str, dict[str, str]] = {}
    for key in keys:
        name = key.removeprefix(PEFT_PREFIX)
        for role, pattern in _ROLES.items():
            if match := pattern.fullmatch(name):
                modules.setdefault(match.group(1), {})[role] = key
                break
        else:
            if strict:
                raise AdapterError(
                    f"adapter {folder}: tensor {key} is not a LoRA A/B matrix or a DoRA "
                    "magnitude (modules_to_save, biases and embedding adapters are peft-only)"
                )
    for module, roles in modules.items():
        if not {"A", "B"} <= roles.keys():
            raise AdapterError(f"adapter {folder}: {module} lacks its lora_A or lora_B")
    return modules


def mlx_module_path(module: str, model_type: str) -> str:
    """The mlx-lm path of the transformers module path `module`."""
    old, new = MLX_PREFIX.get(model_type, ("", ""))
    return new + module.removeprefix(old) if old and module.startswith(old) else module


def hf_module_path(path: str, model_type: str) -> str:
    """The transformers path of the mlx-lm module path `path`."""
    old, new = MLX_PREFIX.get(model_type, ("", ""))
    return old + path.removeprefix(new) if old and path.startswith(new) else path


def to_mlx_lm(
    tensors: Mapping[str, Any], model_type: str, folder: str | Path = "adapter"
) -> dict[str, Any]:
    """PEFT's adapter tensors as mlx-lm's: `M.lora_a` = A transposed, `M.lora_b` = B
    transposed, `M.m` = the DoRA magnitude, under mlx-lm's module paths. The names are the
    parameter paths of an mlx-lm model adapted with LoRALinear/DoRALinear, and the keys of
    mlx-lm's `adapters.safetensors`. Arrays are numpy or mlx; transposed ones are views."""
    out: dict[str, Any] = {}
    for module, roles in adapted_modules(tensors, folder).items():
        path = mlx_module_path(module, model_type)
        for role, key in roles.items():
            leaf, transpose = _MLX_LEAVES[role]
            out[f"{path}.{leaf}"] = tensors[key].T if transpose else tensors[key]
    return out


def to_peft(tensors: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    """The inverse of `to_mlx_lm`: mlx-lm adapter parameters (`M.lora_a`, `M.lora_b`, `M.m`)
    under PEFT's names and in its shapes. Raises AdapterError for any other parameter."""
    leaves = {leaf: (role, transpose) for role, (leaf, transpose) in _MLX_LEAVES.items()}
    peft_suffix = {"A": "lora_A.weight", "B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}
    out: dict[str, Any] = {}
    for name, value in tensors.items():
        path, _, leaf = name.rpartition(".")
        if leaf not in leaves:
            raise AdapterError(f"{name}: a trainable tensor PEFT's adapter layout has no place for")
        role, transpose = leaves[leaf]
        key = f"{PEFT_PREFIX}{hf_module_path(path, model_type)}.{peft_suffix[role]}"
        out[key] = value.T if transpose else value
    return out


def merged_weight(
    weight: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    scale: float,
    magnitude: np.ndarray | None = None,
) -> np.ndarray:
    """The (out, in) weight with the adapter merged in, in float32, as peft merges it: LoRA
    W + s B A; DoRA the same row-scaled to the magnitude, m / ||W + s B A||_rows * (W + s B A)."""
    merged = weight.astype(np.float32) + np.float32(scale) * (
        b.astype(np.float32) @ a.astype(np.float32)
    )
    if magnitude is not None:
        norms = np.linalg.norm(merged, axis=1)
        merged *= (magnitude.astype(np.float32) / norms)[:, None]
    return merged


def _block_key(path: str) -> str:
    # mlx-lm's `keys`: a module's path inside its transformer block (`self_attn.q_proj`), or
    # the whole path for a module outside the blocks (`lm_head`).
    parts = path.split(".")
    at = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return path if at is None else ".".join(parts[at + 1 :])


def _block_index(path: str) -> int | None:
    return next((int(part) for part in path.split(".") if part.isdigit()), None)


def _base_config(config: AdapterConfig) -> dict[str, Any]:
    # The adapter names its base; ft's trainers write the local folder they trained from.
    base = Path(config.base_model).expanduser() if config.base_model else None
    if base is not None and (base / "config.json").is_file():
        found: dict[str, Any] = json.loads((base / "config.json").read_text(encoding="utf-8"))
        return found
    return {}


def mlx_lm_adapter(
    folder: str | Path,
    *,
    base_config: Mapping[str, Any] | None = None,
    num_layers: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The PEFT LoRA/DoRA adapter in `folder` as mlx-lm's (tensors, adapter_config), which
    `mlx_lm.load(model, adapter_path=...)`, `load_adapters` and `mlx_lm.fuse` read.

    `base_config` is the base model's config.json (default: the one of the folder the adapter
    names as its base, when it exists); it gives the module paths (GPT-2/GPT-J) and the layer
    count. `num_layers` is mlx-lm's count of adapted blocks, from the last; default: from the
    first adapted block to the end, or every block (-1) without a base config.
    """
    config = read_adapter_config(folder)
    if not config.is_lora:
        raise AdapterError(
            f"adapter {folder}: mlx-lm's adapter layout holds LoRA and DoRA adapters, and "
            f"this one is {config.peft_type}"
        )
    if not config.uniform:
        raise AdapterError(
            f"adapter {folder} has per-module ranks or alphas (rank_pattern/alpha_pattern), "
            "and mlx-lm's adapter layout has one rank and scale for every layer"
        )
    base = dict(base_config) if base_config is not None else _base_config(config)
    model_type = str(base.get("model_type", ""))
    tensors = {
        name: np.ascontiguousarray(values, dtype=np.float32)
        for name, values in to_mlx_lm(read_adapter_tensors(folder), model_type, folder).items()
    }
    paths = {name.rpartition(".")[0] for name in tensors}
    if num_layers is None:
        total = base.get("num_hidden_layers") or base.get("n_layer")
        first = min((i for p in paths if (i := _block_index(p)) is not None), default=None)
        num_layers = int(total) - first if total and first is not None else -1
    return tensors, {
        "fine_tune_type": "dora" if config.dora else "lora",
        "num_layers": num_layers,
        "lora_parameters": {
            "rank": config.rank,
            "scale": config.scale,
            "dropout": config.dropout,
            "keys": sorted({_block_key(path) for path in paths}),
        },
    }


def save_mlx_lm_adapter(
    folder: str | Path,
    out: str | Path,
    *,
    base_config: Mapping[str, Any] | None = None,
    num_layers: int | None = None,
) -> Path:
    """Write the PEFT adapter in `folder` in mlx-lm's layout into the folder `out`
    (`adapters.safetensors` + `adapter_config.json`; see `mlx_lm_adapter`). Returns `out`."""
    from ft_config import atomic_write_text

    tensors, config = mlx_lm_adapter(folder, base_config=base_config, num_layers=num_layers)
    out = Path(out)
    write_tensors(out / MLX_LM_WEIGHTS, tensors, metadata={"format": "mlx"})
    atomic_write_text(out / MLX_LM_CONFIG, json.dumps(config, indent=2) + "\n")
    return out


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "MLX_LM_CONFIG",
    "MLX_LM_WEIGHTS",
    "MLX_PREFIX",
    "PEFT_PREFIX",
    "AdapterConfig",
    "AdapterError",
    "adapted_modules",
    "adapter_weights",
    "hf_module_path",
    "lora_scale",
    "merged_weight",
    "mlx_lm_adapter",
    "mlx_module_path",
    "read_adapter_config",
    "read_adapter_tensors",
    "save_mlx_lm_adapter",
    "to_mlx_lm",
    "to_peft",
]
