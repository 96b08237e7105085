"""ft's own Hugging Face -> GGUF converter, built on gguf-py's writer, tensor-name maps and quants.

It reads a safetensors model folder with numpy (no torch), renames every tensor through
`gguf.get_tensor_name_map` (the map llama.cpp's `convert_hf_to_gguf.py` uses), applies the few
changes llama.cpp's loader expects, and streams the tensors into the file one at a time, so
peak memory is about one tensor rather than the whole model:

- Llama/Mistral: q_proj/k_proj rows permuted so each head's rotary halves interleave (llama.cpp
  rotates adjacent pairs; Hugging Face rotates halves). transformers' GGUF loader undoes it.
- Gemma: RMSNorm weights stored as `w + 1` (Gemma scales by `1 + w`; llama.cpp multiplies).
- GPT-2: Conv1D weights transposed from (in, out) to (out, in).

`convert_lora_to_gguf` writes a PEFT LoRA adapter as a GGUF adapter (`general.type=adapter`)
for `llama-cli --lora`: tensors `<name>.weight.lora_a` (r x in) and `.lora_b` (out x r).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import (
    GGML_QUANT_VERSION,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    get_tensor_name_map,
)
from gguf.quants import quant_shape_to_byte_shape

from ft_export.gguf_hparams import (
    GGUFExportError,
    decoder_hparams,
    gemma_notes,
    gpt2_hparams,
)
from ft_export.gguf_types import GGUF_TYPES, encode, tensor_types
from ft_export.gguf_vocab import read_vocab
from ft_models.adapters import (
    AdapterError,
    adapted_modules,
    read_adapter_config,
    read_adapter_tensors,
)
from ft_models.load import weight_files
from ft_models.safetensors_io import iter_tensors, read_header


def chosen_gguf_type(quant: str | None, default: str) -> str:
    """The GGUF type `--quant` asks for (`default` without one), checked before any work."""
    from ft_export.types import ExportError

    gguf_type = (quant or default).lower()
    if gguf_type not in GGUF_TYPES:
        raise ExportError(
            f"--quant {gguf_type} is not a GGUF type ft writes: {', '.join(GGUF_TYPES)}"
        )
    return gguf_type


Progress = Callable[[str, int, int], None]


def _no_progress(step: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class GGUFArchitecture:
    """How one Hugging Face `model_type` is written."""

    arch: MODEL_ARCH
    hparams: Callable[[GGUFWriter, Mapping[str, Any], str], list[tuple[str, np.ndarray]]]
    """Writes the keys; returns the tensors llama.cpp generates (rope factors)."""
    permute_qk: bool = False
    norm_plus_one: bool = False
    transposed: tuple[str, ...] = ()
    """HF name suffixes stored (in, out) that GGUF wants as (out, in)."""
    tied_output: bool = False
    """The architecture always ties lm_head to the embeddings (Gemma)."""

    @property
    def name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]


ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "llama": GGUFArchitecture(MODEL_ARCH.LLAMA, decoder_hparams, permute_qk=True),
    "mistral": GGUFArchitecture(MODEL_ARCH.LLAMA, decoder_hparams, permute_qk=True),
    "qwen2": GGUFArchitecture(MODEL_ARCH.QWEN2, decoder_hparams),
    "qwen3": GGUFArchitecture(MODEL_ARCH.QWEN3, decoder_hparams),
    "phi3": GGUFArchitecture(MODEL_ARCH.PHI3, decoder_hparams),
    "gemma": GGUFArchitecture(
        MODEL_ARCH.GEMMA, decoder_hparams, norm_plus_one=True, tied_output=True
    ),
    "gemma2": GGUFArchitecture(
        MODEL_ARCH.GEMMA2, decoder_hparams, norm_plus_one=True, tied_output=True
    ),
    "gemma3_text": GGUFArchitecture(
        MODEL_ARCH.GEMMA3, decoder_hparams, norm_plus_one=True, tied_output=True
    ),
    "gpt2": GGUFArchitecture(
        MODEL_ARCH.GPT2,
        gpt2_hparams,
        transposed=(
            ".attn.c_attn.weight",
            ".attn.c_proj.weight",
            ".mlp.c_fc.weight",
            ".mlp.c_proj.weight",
        ),
    ),
}
"""Hugging Face `model_type` -> how ft writes it as GGUF."""

# Buffers and leftovers that are not weights in any runtime.
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: interleave each head's two rotary halves."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def architecture_of(config: Mapping[str, Any]) -> GGUFArchitecture:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise GGUFExportError(
            f"ft's GGUF converter does not write {model_type!r} models (it writes "
            f"{', '.join(sorted(ARCHITECTURES))}); export `hf` instead"
        )
    return ARCHITECTURES[model_type]


def _n_layers(config: Mapping[str, Any]) -> int:
    return int(config.get("num_hidden_layers") or config["n_layer"])


@dataclass(frozen=True)
class _Planned:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    """The tensor's numpy shape as written (after any transpose)."""


class _TensorRules:
    """Names and transforms of one model's tensors."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.arch = architecture_of(config)
        self.names = get_tensor_name_map(self.arch.arch, _n_layers(config))
        self.tied = bool(config.get("tie_word_embeddings", self.arch.tied_output))

    def gguf_name(self, hf_name: str) -> str | None:
        if hf_name.endswith(_SKIPPED_SUFFIXES):
            return None
        if hf_name == "lm_head.weight" and (self.tied or self.arch.tied_output):
            return None  # llama.cpp uses token_embd when there is no output tensor
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(
                f"tensor {hf_name!r} has no GGUF name in gguf-py's {self.arch.name} map; "
                "this model variant is not supported by ft's GGUF converter"
            )
        return name  # gguf-py keeps the matched suffix (`.weight`, `.bias`)

    def shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(shape)) if hf_name.endswith(self.arch.transposed) else shape

    def transform(self, hf_name: str, values: np.ndarray) -> np.ndarray:
        config = self.config
        if self.arch.permute_qk and hf_name.endswith("self_attn.q_proj.weight"):
            values = permute_qk(values, config["num_attention_heads"])
        elif self.arch.permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
            heads = config.get("num_key_value_heads") or config["num_attention_heads"]
            values = permute_qk(values, heads)
        elif self.arch.norm_plus_one and hf_name.endswith("norm.weight"):
            values = values + 1
        elif hf_name.endswith(self.arch.transposed):
            values = values.T
        return np.ascontiguousarray(values, dtype=np.float32)

    def untransform(self, hf_name: str, values: np.ndarray) -> np.ndarray:
        """`transform` undone: a tensor read from the GGUF as the Hugging Face model has it."""
        from ft_models.gguf.architectures import reverse_llama_permutation

        config = self.config
        if self.arch.permute_qk and hf_name.endswith("self_attn.q_proj.weight"):
            values = reverse_llama_permutation(values, config["num_attention_heads"])
        elif self.arch.permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
            heads = config.get("num_key_value_heads") or config["num_attention_heads"]
            values = reverse_llama_permutation(values, heads)
        elif self.arch.norm_plus_one and hf_name.endswith("norm.weight"):
            values = values - 1
        elif hf_name.endswith(self.arch.transposed):
            values = values.T
        return np.ascontiguousarray(values, dtype=np.float32)


def tensor_rules(config: Mapping[str, Any]) -> _TensorRules:
    """How a model with this config.json is written: GGUF names (`gguf_name`), the changes
    made on the way (`transform`) and their inverse (`untransform`)."""
    return _TensorRules(config)


def _add_info(
    writer: GGUFWriter, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType
) -> None:
    if qtype == GGMLQuantizationType.F32:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * math.prod(shape))
    elif qtype == GGMLQuantizationType.F16:
        writer.add_tensor_info(name, shape, np.dtype(np.float16), 2 * math.prod(shape))
    else:
        byte_shape = quant_shape_to_byte_shape(shape, qtype)
        writer.add_tensor_info(
            name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype
        )


@dataclass(frozen=True)
class GGUFWritten:
    path: Path
    architecture: str
    tensor_count: int
    chat_template: str | None
    notes: tuple[str, ...] = ()


def convert_to_gguf(
    model_dir: Path,
    out_file: Path,
    gguf_type: str = "f16",
    *,
    name: str | None = None,
    chat_template: str | None = None,
    progress: Progress = _no_progress,
) -> GGUFWritten:
    """Write the Hugging Face model folder `model_dir` as the GGUF file `out_file`.

    `gguf_type` is one of `GGUF_TYPES`. `chat_template` overrides the folder's own template.
    The file is written beside `out_file` under a temporary name and renamed when complete.
    Raises `GGUFExportError` for an architecture or tokenizer it cannot write.
    """
    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(
            f"unknown GGUF type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}"
        )
    kind = GGUF_TYPES[gguf_type]
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    rules = _TensorRules(config)
    vocab = read_vocab(model_dir, config["vocab_size"], chat_template)

    files = weight_files(model_dir)
    names: list[tuple[str, str, tuple[int, ...]]] = []
    for path in files:
        for hf_name, info in read_header(path).tensors.items():
            gguf_name = rules.gguf_name(hf_name)
            if gguf_name is not None:
                names.append((hf_name, gguf_name, rules.shape(hf_name, info.shape)))

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".tmp-{out_file.name}-{os.getpid()}")
    writer = GGUFWriter(tmp, rules.arch.name)
    try:
        writer.add_type("model")
        writer.add_name(name or model_dir.name)
        writer.add_file_type(int(kind.file_type))
        if kind.weights not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            writer.add_quantization_version(GGML_QUANT_VERSION)
        extra = dict(rules.arch.hparams(writer, config, rules.arch.name))
        vocab.add_to(writer)
        shapes = [(gguf, shape) for _, gguf, shape in names]
        shapes += [(gguf, values.shape) for gguf, values in extra.items()]
        types = tensor_types(gguf_type, shapes, _n_layers(config))
        plan = [_Planned(hf, gguf, shape) for hf, gguf, shape in names]
        for gguf_name, shape in shapes:
            _add_info(writer, gguf_name, shape, types[gguf_name])
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        wanted = {item.hf_name: item for item in plan}
        done, total = 0, len(shapes)
        for hf_name, values in (pair for path in files for pair in iter_tensors(path)):
            item = wanted.get(hf_name)
            if item is None:
                continue
            writer.write_tensor_data(
                encode(rules.transform(hf_name, values), types[item.gguf_name])
            )
            done += 1
            progress("writing GGUF tensors", done, total)
        for gguf_name, values in extra.items():
            writer.write_tensor_data(encode(values, types[gguf_name]))
            done += 1
            progress("writing GGUF tensors", done, total)
        writer.close()
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(out_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return GGUFWritten(
        out_file,
        rules.arch.name,
        len(shapes),
        vocab.chat_template,
        tuple(_type_notes(gguf_type, shapes, types) + _arch_notes(config, rules.arch.name)),
    )


def _type_notes(
    gguf_type: str,
    shapes: list[tuple[str, tuple[int, ...]]],
    types: Mapping[str, GGMLQuantizationType],
) -> list[str]:
    """Say which 2-D weights did not get the asked type, and why (rows of an odd length)."""
    kind = GGUF_TYPES[gguf_type]
    if kind.recipe is not None:
        counts: dict[str, int] = {}
        for name, shape in shapes:
            if len(shape) >= 2:
                counts[types[name].name] = counts.get(types[name].name, 0) + 1
        mix = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return [f"{gguf_type} (llama.cpp's mix per tensor): {mix}"]
    odd = [name for name, shape in shapes if len(shape) >= 2 and types[name] != kind.weights]
    if not odd or kind.weights == GGMLQuantizationType.F32:
        return []
    return [
        f"{len(odd)} tensors with rows not divisible by the {gguf_type} block size were "
        f"written as f16 ({', '.join(odd[:3])}...)"
    ]


def _arch_notes(config: Mapping[str, Any], arch: str) -> list[str]:
    return gemma_notes(config) if arch in ("gemma2", "gemma3") else []


def convert_lora_to_gguf(
    adapter_dir: Path,
    base_config: Mapping[str, Any],
    out_file: Path,
    gguf_type: str = "f16",
    *,
    name: str | None = None,
) -> GGUFWritten:
    """Write the PEFT LoRA adapter in `adapter_dir` (for a base with `base_config`) as a GGUF
    LoRA adapter that llama.cpp loads with `--lora`. Types: f32, f16, bf16."""
    if gguf_type not in ("f32", "f16", "bf16"):
        raise GGUFExportError(
            f"a GGUF LoRA adapter is written as f32, f16 or bf16, not {gguf_type}"
        )
    try:
        adapter = read_adapter_config(adapter_dir)
    except AdapterError as error:
        raise GGUFExportError(str(error)) from None
    if not adapter.is_lora:
        raise GGUFExportError(
            f"{adapter_dir}: a {adapter.peft_type} adapter cannot be a GGUF LoRA; "
            "export the merged model instead (--format gguf)"
        )
    if adapter.dora:
        raise GGUFExportError(
            f"{adapter_dir}: llama.cpp has no DoRA; export the merged model (--format gguf)"
        )
    if not adapter.uniform:
        raise GGUFExportError(f"{adapter_dir}: per-module ranks/alphas cannot be written to GGUF")
    try:
        tensors = read_adapter_tensors(adapter_dir)
        modules = adapted_modules(tensors, adapter_dir, strict=True)
    except AdapterError as error:
        raise GGUFExportError(
            f"{error}; a GGUF LoRA holds LoRA matrices only: export the merged model instead "
            "(--format gguf)"
        ) from None
    # llama.cpp scales by alpha / r: the alpha that gives peft's scale (rsLoRA's too)
    alpha = adapter.scale * adapter.rank
    kind = GGUF_TYPES[gguf_type]
    rules = _TensorRules(base_config)
    weights = adapter_dir / "adapter_model.safetensors"

    entries: list[tuple[str, np.ndarray]] = []
    for module, roles in sorted(modules.items()):
        lora_a, lora_b = tensors[roles["A"]], tensors[roles["B"]]
        hf_name = module + ".weight"
        gguf_name = rules.gguf_name(hf_name)
        if gguf_name is None:
            continue
        if rules.arch.permute_qk and hf_name.endswith("self_attn.q_proj.weight"):
            lora_b = permute_qk(lora_b, base_config["num_attention_heads"])
        elif rules.arch.permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
            heads = base_config.get("num_key_value_heads") or base_config["num_attention_heads"]
            lora_b = permute_qk(lora_b, heads)
        # peft keeps A (r, in) and B (out, r) even for GPT-2's Conv1D, which is what GGUF wants
        entries.append((gguf_name + ".lora_a", np.ascontiguousarray(lora_a, dtype=np.float32)))
        entries.append((gguf_name + ".lora_b", np.ascontiguousarray(lora_b, dtype=np.float32)))
    if not entries:
        raise GGUFExportError(f"{weights}: no LoRA matrices found")

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".tmp-{out_file.name}-{os.getpid()}")
    writer = GGUFWriter(tmp, rules.arch.name)
    try:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        writer.add_name(name or adapter_dir.name)
        writer.add_file_type(int(kind.file_type))
        for gguf_name, values in entries:
            qtype = kind.weights
            encoded = encode(values, qtype)
            if qtype == GGMLQuantizationType.BF16:
                writer.add_tensor(gguf_name, encoded, raw_dtype=qtype)
            else:
                writer.add_tensor(gguf_name, encoded)
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return GGUFWritten(out_file, rules.arch.name, len(entries), None)
