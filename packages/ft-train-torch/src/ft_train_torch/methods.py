"""The trainable model of each method: load the base with transformers, adapt it with peft.

| method | what trains | saved as |
| --- | --- | --- |
| `lora`, `dora`, `qlora` | low-rank adapters on `target_modules` (DoRA adds a magnitude vector; QLoRA a 4/8-bit base) | PEFT layout |
| `prefix` | prefix tuning: key/value prefixes in every layer (P-tuning v2's deep prompts, no reparameterization) | PEFT layout |
| `p-tuning` | P-tuning v1: virtual input tokens from a prompt encoder (peft's PromptEncoder) | PEFT layout |
| `full` | every weight | transformers layout (safetensors, config, tokenizer) |
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ft_config import MethodConfig, ModelConfig
from ft_models.checkpoint import staged_folder
from ft_train_torch.attention import register as register_attention

PEFT_METHODS = ("lora", "dora", "qlora", "prefix", "p-tuning")
PROMPT_METHODS = ("prefix", "p-tuning")
METHODS = (*PEFT_METHODS, "full")
TRAINABLE = "trainable.safetensors"  # prompt methods: every trainable tensor, for exact resume
# Classification with an adapter: the classes (id2label, label2id) and pad token the head was
# trained with, beside the adapter (a full fine-tune keeps them in its config.json).
CLASSES = "classes.json"
QLORA_NO_CUDA = (
    "QLoRA needs an NVIDIA GPU with bitsandbytes; this machine has no CUDA device: use method: lora"
)


def check_method(method: str, device: torch.device) -> None:
    """Refuse a method this machine cannot run, saying what to do instead."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "qlora":
        if device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(QLORA_NO_CUDA)
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError(
                "QLoRA needs an NVIDIA GPU with bitsandbytes; bitsandbytes is not installed: "
                'pip install "ft-train-torch[cuda]", or use method: lora'
            )


def load_base_model(
    model_path: Path,
    model: ModelConfig,
    method: MethodConfig,
    device: torch.device,
    dtype: torch.dtype,
    *,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    pad_token_id: int | None = None,
) -> torch.nn.Module:
    """The base model from a local folder, on `device`, in `dtype` (QLoRA: quantized).

    For `model.task: sequence-classification` it is the architecture's sequence classifier
    (BERT's, or a causal LM's with a `score` head, e.g. LlamaForSequenceClassification) with
    one output per class of `label_names` (its `id2label`), a head newly made when the saved
    one has another number of classes, and `pad_token_id` (where rows end, for causal LMs)."""
    import transformers

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    # A causal LM attends per example (ft_train_torch.attention: packed rows at a cost linear
    # in their length); classifiers and prompt-learning methods (whose virtual tokens need
    # the 2D padding mask) keep SDPA, transformers' default.
    per_example = model.task == "causal-lm" and method.name not in PROMPT_METHODS
    kwargs["attn_implementation"] = register_attention() if per_example else "sdpa"
    if method.name == "qlora":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=method.quant_bits == 4,
            load_in_8bit=method.quant_bits == 8,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16
            if torch.cuda.is_bf16_supported()
            else torch.float16,
        )
        kwargs["device_map"] = {"": device}
    if model.task == "sequence-classification":
        if label_names is not None:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        elif num_labels is not None:
            kwargs["num_labels"] = num_labels
        if pad_token_id is not None:
            kwargs["pad_token_id"] = pad_token_id
        # A base saved with another number of classes (or none: a causal LM) gets a new head.
        kwargs["ignore_mismatched_sizes"] = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*newly initialized.*")
            base = transformers.AutoModelForSequenceClassification.from_pretrained(
                model_path, **kwargs
            )
    else:
        base = transformers.AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if method.name != "qlora":
        base.to(device)
    base.config.use_cache = False  # no KV cache while training: it only costs memory
    return base


def apply_method(base: torch.nn.Module, method: MethodConfig, task: str) -> torch.nn.Module:
    """Wrap `base` for `method`: a peft model with only the adapter trainable, or (full) the
    base itself with every parameter trainable."""
    if method.name == "full":
        for parameter in base.parameters():
            parameter.requires_grad_(True)
        return base
    import peft

    task_type = (
        peft.TaskType.SEQ_CLS if task == "sequence-classification" else peft.TaskType.CAUSAL_LM
    )
    if method.name == "qlora":
        base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if method.name in ("lora", "dora", "qlora"):
        targets = method.target_modules
        config: Any = peft.LoraConfig(
            task_type=task_type,
            r=method.rank,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            use_rslora=method.rslora,
            use_dora=method.name == "dora",
            bias="none",
        )
    elif method.name == "prefix":
        config = peft.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=method.num_virtual_tokens
        )
    else:  # p-tuning
        config = peft.PromptEncoderConfig(
            task_type=task_type,
            num_virtual_tokens=method.num_virtual_tokens,
            encoder_hidden_size=128,
        )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`: not the user's concern.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return peft.get_peft_model(base, config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, as peft's `get_nb_trainable_parameters` counts them (a
    4-bit weight counts as two parameters)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(model.get_nb_trainable_parameters())  # type: ignore[return-value]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# -- saving and restoring the weights -----------------------------------------------------------


def save_weights(
    model: torch.nn.Module,
    folder: Path,
    method: str,
    model_path: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the trained weights into `folder`: the adapter in PEFT's layout, or (full) the whole
    model in transformers' layout with its tokenizer, so the folder loads with `from_pretrained`.
    `state_dict`: the weights to write when `model` holds only a shard of them (FSDP)."""
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        if method in PROMPT_METHODS:
            raise ValueError(f"method {method} cannot be saved from a sharded model")
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    if method in PEFT_METHODS:
        save_classes(model, folder)
    if method in PROMPT_METHODS:
        # peft saves P-tuning's prompt as the encoder's output only; resuming needs the encoder.
        tensors = {
            n: p.detach().cpu().contiguous().clone()
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        save_file(tensors, str(folder / TRAINABLE))
    if method == "full":
        _copy_tokenizer(model_path, folder)


def save_classes(model: torch.nn.Module, folder: Path) -> None:
    """For a sequence classifier under an adapter: write `classes.json` (id2label, label2id,
    pad_token_id) into `folder`, so the adapter says which class each output is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__name__.endswith("ForSequenceClassification"):
        return
    config = base.config
    from ft_config import atomic_write_text

    id2label = {str(i): str(name) for i, name in sorted(config.id2label.items())}
    classes = {
        "id2label": id2label,
        "label2id": {name: int(i) for i, name in id2label.items()},
        "num_labels": len(id2label),
        "pad_token_id": config.pad_token_id,
    }
    atomic_write_text(folder / CLASSES, json.dumps(classes, indent=2) + "\n")


def read_classes(folder: Path) -> dict[str, Any] | None:
    """What `save_classes` wrote into `folder` (id2label with int keys), or None."""
    path = Path(folder) / CLASSES
    if not path.is_file():
        return None
    classes = json.loads(path.read_text())
    classes["id2label"] = {int(i): name for i, name in classes["id2label"].items()}
    return classes


def load_weights(model: torch.nn.Module, folder: Path, method: str) -> None:
    """Put the weights `save_weights` wrote back into `model` (built the same way), bit for bit."""
    if method in PROMPT_METHODS:
        tensors = load_file(str(folder / TRAINABLE))
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in tensors.items():
                named[name].copy_(tensor)
        return
    if method in PEFT_METHODS:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(
            model, load_file(str(folder / "adapter_model.safetensors"))
        )
        if result.unexpected_keys:
            raise ValueError(
                f"{folder}: adapter tensors the model has no place for: {result.unexpected_keys[:5]}"
            )
        return
    state: dict[str, torch.Tensor] = {}
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    for file in files:
        state.update(load_file(str(folder / file)))
    result = model.load_state_dict(state, strict=False)
    tied = {name for name in result.missing_keys if _is_tied(model, name)}
    missing = [name for name in result.missing_keys if name not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{folder}: weights do not match the model (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    """True for a parameter shared with another (tied embeddings), saved once under the other name."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target and n != name for n, p in params.items())


def _copy_tokenizer(model_path: Path, folder: Path) -> None:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(model_path).save_pretrained(folder)
    except (OSError, ValueError):
        pass  # a model without a tokenizer (rare): the weights are still complete


def save_final(
    model: torch.nn.Module,
    final: Path,
    method: str,
    model_path: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save the result into `final` whole or not at all (`ft_models.checkpoint.staged_folder`)."""
    with staged_folder(final) as build:
        save_weights(model, build, method, model_path, state_dict)
    return final
