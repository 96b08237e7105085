"""Load a local Hugging Face model folder for torch (transformers) or MLX (mlx-lm).

A folder holds `config.json`, the weights as safetensors (one `model.safetensors`, or shards
listed in `model.safetensors.index.json`) and the tokenizer files. Weights are only ever read
from safetensors: a folder with nothing but pickles (`pytorch_model.bin`) is refused before
any loader sees it, because unpickling runs code.

`SUPPORT` says which architecture loads on which backend; the tests load every entry, and
docs/architectures.md is `architectures_markdown()` written out, so the table, the tests and
the doc cannot disagree.

torch, transformers, mlx and mlx-lm are imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_models.device import (
    MLX_MISSING,
    TORCH_MISSING,
    normalize_dtype,
    pick_backend,
    pick_device,
    pick_dtype,
)
from ft_models.shape import FAMILIES

# Which backend each architecture (config.json `model_type`) loads on. MLX loads through
# mlx-lm's own model definitions, so its column is what mlx-lm (0.32.2) implements.
SUPPORT: dict[str, dict[str, bool]] = {
    "llama": {"torch": True, "mlx": True},
    "mistral": {"torch": True, "mlx": True},
    "phi3": {"torch": True, "mlx": True},
    "qwen2": {"torch": True, "mlx": True},
    "gemma": {"torch": True, "mlx": True},
    "gpt2": {"torch": True, "mlx": True},
    "gptj": {"torch": True, "mlx": True},
    "bert": {"torch": True, "mlx": False},
}

NOTES: dict[str, str] = {
    "mistral": "mlx-lm runs Mistral with its Llama definition.",
    "qwen2": (
        "transformers 5 writes `rope_theta` inside `rope_parameters`; ft passes it to mlx-lm, "
        "whose Qwen2 default (1,000,000) would otherwise change every logit."
    ),
    "gpt2": (
        "MLX: only the standard MLP width (`n_inner` unset or 4 x `n_embd`): mlx-lm ignores "
        "`n_inner`. ft strips the `transformer.` prefix that transformers writes and fills in "
        "`n_ctx`, which mlx-lm requires."
    ),
    "gptj": "MLX: only the standard MLP width (`n_inner` unset or 4 x `n_embd`): mlx-lm ignores `n_inner`.",
    "bert": (
        "Sequence classification (`AutoModelForSequenceClassification`, `num_labels`); "
        "mlx-lm has no encoder models, so torch only."
    ),
}

# Architectures that are encoders: they load as sequence classifiers, not causal LMs.
CLASSIFIERS = {"bert"}

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
    """The architecture family of a config (`model_type`, mapped as ft_models.shape does)."""
    model_type = str(config.get("model_type", ""))
    family = FAMILIES.get(model_type)
    if family is None or family not in SUPPORT:
        raise ModelLoadError(
            f"model_type {model_type!r} is not one ft loads: supported are {', '.join(SUPPORT)}"
        )
    return family


# Why an architecture does not run on a backend, for the error.
WHY_NOT: dict[tuple[str, str], str] = {
    ("bert", "mlx"): "mlx-lm has no encoder (BERT-style) models",
}


def check_support(family: str, backend: str) -> None:
    """Raise ModelLoadError when `family` does not run on `backend`, saying what does."""
    if not SUPPORT.get(family, {}).get(backend, False):
        others = [name for name, ok in SUPPORT.get(family, {}).items() if ok]
        hint = f"set training.backend: {others[0]}" if others else "use another model"
        why = WHY_NOT.get((family, backend), f"ft does not support {family} on {backend}")
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
    return FAMILIES.get(str(config.get("model_type", ""))) in CLASSIFIERS


# -- MLX --------------------------------------------------------------------------------------


def mlx_config_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """Config fields mlx-lm needs in another form than transformers writes them.

    Raises ModelLoadError for a config mlx-lm's definition would load wrongly (a GPT-2/GPT-J
    MLP of non-standard width, which mlx-lm ignores).
    """
    overrides: dict[str, Any] = {}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in config and "rope_theta" in rope:
        # transformers 5 nests rope_theta; mlx-lm reads it top-level and falls back to its own
        # default, which for Qwen2 is 1e6 instead of the usual 1e4.
        overrides["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
            overrides["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    model_type = config.get("model_type")
    if model_type in ("gpt2", "gptj"):
        width, inner = config.get("n_embd"), config.get("n_inner")
        if inner is not None and width is not None and inner != 4 * width:
            raise ModelLoadError(
                f"this {model_type} model has an MLP of n_inner={inner}, not 4 x n_embd="
                f"{4 * width}; mlx-lm's {model_type} only builds the standard width, so its "
                "weights would not fit. Set training.backend: torch."
            )
    if model_type == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        overrides["n_ctx"] = config["n_positions"]  # transformers 5 no longer writes n_ctx
    return overrides


# Prefixes transformers writes that mlx-lm's sanitize() does not expect.
_MLX_STRIP_PREFIX = {"gpt2": "transformer."}


def _mlx_model_classes(config: dict[str, Any]) -> tuple[type, type]:
    from mlx_lm.utils import _get_classes  # mlx-lm's own lookup, remapping included

    model_class, args_class = _get_classes(config)
    prefix = _MLX_STRIP_PREFIX.get(str(config.get("model_type")))
    if prefix is None:
        return model_class, args_class

    class Model(model_class):  # type: ignore[misc, valid-type]
        def sanitize(self, weights: dict[str, Any]) -> dict[str, Any]:
            weights = {name.removeprefix(prefix): value for name, value in weights.items()}
            weights.pop("lm_head.weight", None)  # tied to the embeddings in mlx-lm's GPT-2
            return super().sanitize(weights)

    return Model, args_class


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
            get_model_classes=_mlx_model_classes,
            trust_remote_code=bool(trust_remote_code),
        )
    except ValueError as error:
        raise ModelLoadError(f"mlx-lm cannot load {folder}: {error}") from error
    if dtype not in (None, "auto"):
        model.set_dtype(getattr(mx, normalize_dtype(dtype)))
    model.eval()
    tokenizer = load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer


# -- the doc ----------------------------------------------------------------------------------


def architectures_markdown() -> str:
    """docs/architectures.md: the SUPPORT table and its notes, as Markdown."""
    lines = [
        "# Architectures",
        "",
        "Which model architectures (config.json `model_type`) ft loads on which backend.",
        "Generated from `ft_models.load.SUPPORT`; the tests load a tiny random model of every",
        "architecture on every backend marked yes, and check this file equals the table.",
        "",
        "| architecture | torch | MLX | notes |",
        "| --- | --- | --- | --- |",
    ]
    for family, backends in SUPPORT.items():
        cells = ["yes" if backends[name] else "no" for name in ("torch", "mlx")]
        lines.append(f"| {family} | {cells[0]} | {cells[1]} | {NOTES.get(family, '')} |")
    lines += [
        "",
        "torch loads causal LMs with `AutoModelForCausalLM` on cuda, mps or cpu, in float32,",
        "bfloat16 or float16. MLX loads through mlx-lm's model definitions, on the Metal GPU on",
        "Apple Silicon and on the CPU elsewhere. Weights are read from safetensors only (a",
        "folder with only `pytorch_model.bin` is refused); sharded folders are read through",
        "`model.safetensors.index.json`.",
        "",
        "## Checking MLX against torch",
        "",
        "`ft_models.convert.check_logits(folder)` runs the same 32 token ids through the torch",
        "and the MLX model in float32 and raises `ConversionError` when the logits differ by",
        "more than the tolerance: 1e-4 x max(1, largest |logit|), absolute, unless given.",
        "`convert_to_mlx(folder, output)` writes an MLX folder only after that check passes.",
        "",
        "| model | largest difference | tolerance |",
        "| --- | --- | --- |",
        "| tiny random models above (2 layers, width 64), each | 5.4e-7 or less | 1e-4 to 1.5e-4 |",
        "| SmolLM2-135M-Instruct (30 layers) | 1.9e-4 (mean 2.3e-5) | 3.6e-3 |",
        "| SmolLM2-135M read by mlx-lm alone (rope_theta 1e4, not 1e5) | 7.5 | 3.6e-3: caught |",
        "",
    ]
    return "\n".join(lines)
