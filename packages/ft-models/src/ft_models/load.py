"""Load a local Hugging Face model folder for torch (transformers) or MLX (mlx-lm).

A folder holds `config.json`, the weights as safetensors (one `model.safetensors`, or shards
listed in `model.safetensors.index.json`) and the tokenizer files. Weights are only ever read
from safetensors: a folder with nothing but pickles (`pytorch_model.bin`) is refused before
any loader sees it, because unpickling runs code.

`SUPPORT` says which architecture loads on which backend: the `load` columns of
`ft_models.architectures`, whose table docs/architectures.md is (`architectures_markdown`).

torch, transformers, mlx and mlx-lm are imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_models import mlx_arch
from ft_models.architectures import (
    ARCHITECTURES,
    BACKENDS,
    TYPE_TO_FAMILY,
)
from ft_models.device import (
    MLX_MISSING,
    TORCH_MISSING,
    normalize_dtype,
    pick_backend,
    pick_device,
    pick_dtype,
)

# Which backend each architecture (ft's family) loads on: the `load` columns of the table in
# ft_models.architectures. MLX loads through mlx-lm's own model definitions.
SUPPORT: dict[str, dict[str, bool]] = {
    family: {backend: arch.supports(f"{backend} load") for backend in BACKENDS}
    for family, arch in ARCHITECTURES.items()
}

# Architectures that are encoders: they load as sequence classifiers, not causal LMs.
CLASSIFIERS = {family for family, arch in ARCHITECTURES.items() if arch.classifier}

_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")


class ModelLoadError(ValueError):
    """A model folder ft cannot load: what is wrong, in which folder, and what to do."""


# What a model folder holds besides the weights and config.json: the tokenizer, the chat
# template and the generation defaults (files a model may or may not have).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def copy_tokenizer_files(source: Path, dest: Path) -> None:
    """Copy the `TOKENIZER_FILES` that `source` has into `dest`."""
    import shutil

    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, Path(dest) / name)


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's `config.json` as a dict. Raises ModelLoadError when it is missing."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no config.json: is it a Hugging Face model folder?")
    return json.loads(path.read_text(encoding="utf-8"))


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, in order: the shards that
    `model.safetensors.index.json` names (each checked to exist), else `model.safetensors`.

    Raises ModelLoadError when the weights are only pickles, or a shard is missing.
    """
    folder = Path(folder)
    index = folder / _INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ModelLoadError(
                f"{index} names {len(shards)} shard(s) but {', '.join(missing)} is missing: "
                "download the model again"
            )
        return [folder / name for name in shards]
    if (folder / _WEIGHTS).is_file():
        return [folder / _WEIGHTS]
    pickles = [name for name in _PICKLES if (folder / name).exists()]
    if pickles:
        raise ModelLoadError(
            f"{folder} has its weights only as {', '.join(pickles)} (pickle), which ft never "
            "loads: unpickling can run arbitrary code. Use a revision of the model with "
            "safetensors weights, or convert it where you trust the file "
            "(transformers: from_pretrained, then save_pretrained(safe_serialization=True))."
        )
    raise ModelLoadError(f"{folder} has no {_WEIGHTS} or {_INDEX}")


def family_of(config: dict[str, Any]) -> str:
    """The architecture family of a config (its `model_type`, as ft_models.architectures
    lists them). Raises ModelLoadError for a model_type ft does not load."""
    model_type = str(config.get("model_type", ""))
    family = TYPE_TO_FAMILY.get(model_type)
    if family is None:
        why = _NOT_LOADED.get(model_type, "")
        raise ModelLoadError(
            f"model_type {model_type!r} is not one ft loads{why}: supported are "
            f"{', '.join(TYPE_TO_FAMILY)} (docs/architectures.md)"
        )
    return family


# model_types people meet next to supported ones, and why they do not load.
_NOT_LOADED = {
    "gemma3": (
        " (the multimodal Gemma 3, 4B and up; ft loads the text-only gemma3_text, gemma-3-1b)"
    ),
}


def check_support(family: str, backend: str) -> None:
    """Raise ModelLoadError when `family` does not run on `backend`, saying what does."""
    if not SUPPORT.get(family, {}).get(backend, False):
        others = [name for name, ok in SUPPORT.get(family, {}).items() if ok]
        hint = f"set training.backend: {others[0]}" if others else "use another model"
        why = ARCHITECTURES[family].why_not(f"{backend} load") if family in ARCHITECTURES else None
        why = why or f"ft does not support {family} on {backend}"
        raise ModelLoadError(
            f"{family} models do not run on {backend}: {why}. To train it, {hint}."
        )


def load_pretrained(
    folder: Path,
    *,
    backend: str = "auto",
    dtype: str = "auto",
    device: str = "auto",
    num_labels: int | None = None,
    trust_remote_code: bool | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) of the folder on the backend `pick_backend(backend)` chooses: see
    `load_torch` and `load_mlx` (which ignores `device` and `num_labels`)."""
    choice = pick_backend(backend)
    if choice.backend == "mlx":
        return load_mlx(folder, dtype=dtype, trust_remote_code=trust_remote_code)
    return load_torch(
        folder,
        dtype=dtype,
        device=device,
        num_labels=num_labels,
        trust_remote_code=trust_remote_code,
    )


def load_torch(
    folder: Path,
    *,
    dtype: str = "auto",
    device: str = "auto",
    num_labels: int | None = None,
    trust_remote_code: bool | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) of a local folder with transformers, on `pick_device(device)` in
    `dtype` (float32, bfloat16, float16, or auto: `pick_dtype`).

    Causal LMs load with AutoModelForCausalLM; BERT-style encoders (and any config whose
    architecture is a `...ForSequenceClassification`) with AutoModelForSequenceClassification,
    `num_labels` classes (default: the config's; another count gets a new, untrained head). Weights come from safetensors only
    (memory-mapped by transformers). `trust_remote_code` is passed on only when given.
    Raises ModelLoadError for a folder ft cannot load, DeviceError for an unavailable device,
    ImportError without torch.
    """
    folder = Path(folder)
    config = read_config(folder)
    family = family_of(config)
    check_support(family, "torch")
    weight_files(folder)
    try:
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(TORCH_MISSING) from error

    chosen = pick_device(device).device
    dtype_name = pick_dtype(chosen, dtype).dtype
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name), "use_safetensors": True}
    if trust_remote_code is not None:
        kwargs["trust_remote_code"] = trust_remote_code
    if is_classifier(config):
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
            # transformers leaves the default (2 labels) out of config.json.
            saved = len(config.get("id2label") or {}) or config.get("num_labels") or 2
            if saved != num_labels:
                # Another label count: the saved head does not fit and a new one is trained.
                kwargs["ignore_mismatched_sizes"] = True
        auto_class = transformers.AutoModelForSequenceClassification
    else:
        auto_class = transformers.AutoModelForCausalLM
    model = auto_class.from_pretrained(folder, **kwargs).to(chosen)
    model.eval()
    tokenizer_kwargs = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **tokenizer_kwargs)
    return model, tokenizer


def is_classifier(config: dict[str, Any]) -> bool:
    """Whether the config describes a sequence classifier rather than a causal LM."""
    architectures = config.get("architectures") or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return True
    return TYPE_TO_FAMILY.get(str(config.get("model_type", ""))) in CLASSIFIERS


# -- MLX --------------------------------------------------------------------------------------


def mlx_config_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """Config fields mlx-lm needs in another form than transformers writes them
    (`ft_models.mlx_arch.mlx_config_overrides`).

    Raises ModelLoadError for a config mlx-lm's definition would load wrongly (a GPT-2/GPT-J
    MLP of non-standard width, which mlx-lm ignores; a Gemma 3 layer layout it cannot build).
    """
    try:
        return mlx_arch.mlx_config_overrides(config)
    except mlx_arch.MLXConfigError as error:
        raise ModelLoadError(str(error)) from None


def load_mlx(
    folder: Path,
    *,
    dtype: str | None = "auto",
    trust_remote_code: bool | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) of a local folder with mlx-lm's model definitions.

    `dtype` float32, bfloat16 or float16 casts the weights; "auto" or None keeps the dtype
    they were saved in. The tokenizer is mlx-lm's TokenizerWrapper (a transformers tokenizer
    with streaming detokenization). Raises ModelLoadError for an architecture mlx-lm lacks or
    weights that do not fit its definition, ImportError without mlx-lm.
    """
    folder = Path(folder)
    config = read_config(folder)
    family = family_of(config)
    check_support(family, "mlx")
    weight_files(folder)
    try:
        import mlx.core as mx
        from mlx_lm.utils import load_model, load_tokenizer
    except ImportError as error:
        raise ImportError(MLX_MISSING) from error

    overrides = mlx_config_overrides(config)
    try:
        model, _ = load_model(
            folder,
            model_config=overrides,
            get_model_classes=mlx_arch.mlx_model_classes,
            trust_remote_code=bool(trust_remote_code),
        )
    except ValueError as error:
        raise ModelLoadError(f"mlx-lm cannot load {folder}: {error}") from error
    if dtype not in (None, "auto"):
        model.set_dtype(getattr(mx, normalize_dtype(dtype)))
    model.eval()
    tokenizer = load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer
