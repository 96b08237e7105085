"""Writing a merged model as GGUF, and checking the file with readers ft did not write.

Two checks, both against ft's merged model (float32):

- `quick` (the default): gguf-py's `GGUFReader` and `dequantize` read every tensor back; each
  must match the source tensor (after llama.cpp's changes: q/k permutation, Gemma's `+1`) within
  its type's error, none may be missing or extra. The dequantized weights, with those changes
  undone, are loaded into the transformers model of the source config, whose logits on the
  check's prompt (one forward pass) are compared with ft's model. Plus: the chat template, the
  vocabulary, and Llama 3's rope factors against transformers' own rope. Its cost is about one
  more copy of the model and two forward passes.
- `full`: transformers' own GGUF loader (`from_pretrained(gguf_file=...)`) rebuilds the model,
  its config and the tokenizer from the file; logits, 8 greedy tokens (f16/f32) and the
  tokenizer's ids must match.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ft_export.building import expected_template, slug
from ft_export.types import ExportOptions, ExportSource, Progress, Verification

CHECKS = ("quick", "full")
"""The export check's depths (`ExportOptions.check`)."""

TENSOR_TOLERANCES: dict[str, float] = {
    "F32": 1e-6,
    "F16": 1e-3,
    "BF16": 8e-3,
    "Q8_0": 2e-2,
    "Q6_K": 5e-2,
    "Q5_K": 0.1,
    "Q5_0": 0.1,
    "Q5_1": 0.1,
    "Q4_K": 0.2,
    "Q4_0": 0.2,
    "Q4_1": 0.2,
}
"""Relative error `||read back - source|| / ||source||` allowed per tensor, by GGUF type.
Gaussian weights come back at about 1/3 of these (Q4_K 0.07, Q5_K 0.036, Q6_K 0.018, Q8_0
0.004); a layout or permutation error is above 1."""


def checked_depth(options: ExportOptions) -> str:
    """`options.check`, refused before any work when it is not a depth ft knows."""
    from ft_export.types import ExportError

    if options.check not in CHECKS:
        raise ExportError(f"--check {options.check}: choose {' or '.join(CHECKS)}")
    return options.check


@dataclass
class WrittenGGUF:
    """A GGUF file ft wrote, and what it was written from."""

    path: Path
    folder: Path
    """The Hugging Face folder converted (a temporary one holding the merge, for adapters)."""
    model: Any | None
    """ft's merged torch model, when adapters were merged (the check reuses it)."""
    tokenizer: Any | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@contextmanager
def written_gguf(
    source: ExportSource, build: Path, gguf_type: str, progress: Progress
) -> Iterator[WrittenGGUF]:
    """Merge (when there are adapters) and convert into `build/<name>-<type>.gguf`. The merged
    folder lives as long as the context, so the check can read the source tensors."""
    from ft_export.gguf_convert import convert_to_gguf

    started = time.perf_counter()
    path = build / f"{slug(source.display_name)}-{gguf_type}.gguf"
    convert = {"name": source.display_name, "chat_template": source.chat_template}
    if not source.adapters:
        written = convert_to_gguf(source.base, path, gguf_type, progress=progress, **convert)
        yield WrittenGGUF(
            path, source.base, None, None, list(written.notes), time.perf_counter() - started
        )
        return
    from ft_export.merge import load_tokenizer, merged_model, save_hf

    progress("loading and merging", 0, 0)
    model, notes = merged_model(source)
    tokenizer = load_tokenizer(source)
    progress("loading and merging", 1, 1)
    with tempfile.TemporaryDirectory(dir=build.parent) as tmp:
        progress("saving the merged model", 0, 1)
        save_hf(model, tokenizer, Path(tmp), "float32", "50GB")
        written = convert_to_gguf(Path(tmp), path, gguf_type, progress=progress, **convert)
        yield WrittenGGUF(
            path,
            Path(tmp),
            model,
            tokenizer,
            notes + list(written.notes),
            time.perf_counter() - started,
        )


def check_gguf(
    source: ExportSource,
    written: WrittenGGUF,
    gguf_type: str,
    options: ExportOptions,
    progress: Progress,
) -> Verification:
    """Check `written` the `options.check` way (quick or full); `seconds` says how long."""
    started = time.perf_counter()
    if options.check == "full":
        verification = _check_full(source, written, gguf_type, options, progress)
    else:
        verification = _check_quick(source, written, gguf_type, options, progress)
    verification.seconds = time.perf_counter() - started
    return verification


def _reference(
    source: ExportSource, written: WrittenGGUF, progress: Progress
) -> tuple[Any, Any, list[str]]:
    """ft's model of `source` in float32 and its tokenizer: the merge when adapters were merged
    for writing, else the plain model, loaded without peft (whose import alone takes seconds)."""
    import torch
    import transformers

    if written.model is not None:
        return written.model, written.tokenizer, []
    progress("loading the source model for the check", 0, 0)
    model = transformers.AutoModelForCausalLM.from_pretrained(source.base, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source.base)
    if source.chat_template is not None:
        tokenizer.chat_template = source.chat_template
    return model.eval(), tokenizer, []


def _check_quick(
    source: ExportSource,
    written: WrittenGGUF,
    gguf_type: str,
    options: ExportOptions,
    progress: Progress,
) -> Verification:
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from ft_export.gguf_convert import tensor_rules
    from ft_export.gguf_hparams import generated_tensors
    from ft_export.verify import TOLERANCES, Reference, compare, prompt_ids, torch_logits
    from ft_models.load import weight_files
    from ft_models.safetensors_io import iter_tensors

    model, tokenizer, notes = _reference(source, written, progress)
    ids = prompt_ids(tokenizer, options.prompt)
    reference = Reference(ids, torch_logits(model, ids), [])

    config = json.loads((written.folder / "config.json").read_text(encoding="utf-8"))
    rules = tensor_rules(config)
    file = GGUFReader(written.path)
    stored = {t.name: t for t in file.tensors}
    worst: dict[str, float] = {}
    failed: list[str] = []
    state: dict[str, Any] = {}

    def read(gguf_name: str, expected: np.ndarray) -> np.ndarray | None:
        tensor = stored.pop(gguf_name, None)
        if tensor is None:
            failed.append(f"{gguf_name} missing")
            return None
        values = dequantize(tensor.data, tensor.tensor_type)
        if values.size != expected.size:
            failed.append(f"{gguf_name} has {values.size} values, not {expected.size}")
            return None
        values = values.reshape(expected.shape).astype(np.float32)
        kind = tensor.tensor_type.name
        scale = max(float(np.linalg.norm(expected)), 1e-30)
        error = float(np.linalg.norm(values - expected)) / scale
        worst[kind] = max(worst.get(kind, 0.0), error)
        if error > TENSOR_TOLERANCES.get(kind, 0.2):
            failed.append(f"{gguf_name} ({kind}) error {error:.2e}")
        return values

    files = weight_files(written.folder)
    total = len(stored)
    done = 0
    for hf_name, values in (pair for path in files for pair in iter_tensors(path)):
        gguf_name = rules.gguf_name(hf_name)
        if gguf_name is None:
            continue
        back = read(gguf_name, rules.transform(hf_name, values))
        if back is not None:
            state[hf_name] = torch.from_numpy(rules.untransform(hf_name, back))
        done += 1
        progress("checking GGUF tensors", done, total)
    for gguf_name, values in generated_tensors(config, rules.arch.name):
        read(gguf_name, values)
    failed.extend(f"{name} is not a tensor of the model" for name in stored)

    progress("checking logits", 0, 1)
    reloaded, unset = _model_with(written.folder, state)
    failed.extend(f"{name} not in the file" for name in unset)
    logits = torch_logits(reloaded, ids)
    progress("checking logits", 1, 1)
    checks = {
        "every tensor within its type's error": not failed,
        "chat template kept": _field_text(file, "tokenizer.chat_template")
        == expected_template(source, tokenizer),
        "vocabulary identical": _vocabulary_matches(file, tokenizer),
    }
    rope = _rope_factors_match(file, reloaded, config)
    if rope is not None:
        checks["rope factors match transformers' rope"] = rope
    errors = ", ".join(f"{kind} {error:.1e}" for kind, error in sorted(worst.items()))
    notes = [*notes, f"tensors read back with gguf-py (worst relative error per type: {errors})"]
    notes.extend(failed[:5])
    return compare(
        reference,
        logits,
        "gguf-py GGUFReader + dequantize, weights loaded into the source config's model",
        TOLERANCES[gguf_type],
        checks=checks,
        notes=notes,
    )


def _model_with(folder: Path, state: dict[str, Any]) -> tuple[Any, list[str]]:
    """The transformers model of `folder`'s config holding `state` (tied weights tied), and the
    names of the weights `state` left unset."""
    import torch
    import transformers
    from transformers.initialization import no_init_weights

    config = transformers.AutoConfig.from_pretrained(folder)
    with no_init_weights():  # every weight is loaded next: random init would be wasted time
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing = set(model.load_state_dict(state, strict=False).missing_keys)
    model.tie_weights()
    if config.tie_word_embeddings:
        missing -= {"lm_head.weight"}
    return model, sorted(missing)


def _field_text(file: Any, key: str) -> str | None:
    field = file.fields.get(key)
    return bytes(field.parts[field.data[0]]).decode("utf-8") if field else None


def _vocabulary_matches(file: Any, tokenizer: Any) -> bool:
    """The file's tokens are the tokenizer's, id for id (padding past the tokenizer allowed)."""
    field = file.fields.get("tokenizer.ggml.tokens")
    if field is None:
        return False
    tokens = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
    ours = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return len(tokens) >= len(ours) and tokens[: len(ours)] == ours


def _rope_factors_match(file: Any, model: Any, config: dict[str, Any]) -> bool | None:
    """Llama 3 rope scaling: llama.cpp divides each rotary frequency by `rope_freqs`, so
    `base_frequencies / rope_freqs` must be transformers' scaled `inv_freq`."""
    from gguf.quants import dequantize

    tensor = next((t for t in file.tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None:
        return False
    factors = dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
    inv_freq = rotary.inv_freq.double().numpy()
    dim = 2 * len(inv_freq)
    theta = float(model.config.rope_parameters["rope_theta"])
    base = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    return len(factors) == len(inv_freq) and bool(
        np.allclose(base / factors, inv_freq, rtol=1e-5, atol=0)
    )


def _check_full(
    source: ExportSource,
    written: WrittenGGUF,
    gguf_type: str,
    options: ExportOptions,
    progress: Progress,
) -> Verification:
    """Reload the GGUF with transformers (gguf-py's reader for architectures transformers does
    not load) and compare with ft's merged model; f16/f32 also match greedy tokens."""
    from gguf import GGUFReader

    from ft_export.merge import import_torch
    from ft_export.verify import TOLERANCES, compare, reference_of, torch_greedy, torch_logits

    model, tokenizer, notes = _reference(source, written, progress)
    progress("reference logits and greedy tokens", 0, 0)
    reference = reference_of(model, tokenizer, options.prompt, options.greedy_tokens)
    torch, transformers, _ = import_torch()
    path = written.path
    config = json.loads((written.folder / "config.json").read_text(encoding="utf-8"))
    progress("reloading the GGUF with transformers", 0, 0)
    if config.get("model_type") in TRANSFORMERS_GGUF:
        kwargs: dict[str, Any] = {}
        gaps = [why for affected, why in _TRANSFORMERS_GGUF_GAPS.get(
            config["model_type"], ()) if affected(config)]  # fmt: skip
        if gaps:
            # the weights still come from the file; only the config is taken from the source
            kwargs["config"] = transformers.AutoConfig.from_pretrained(written.folder)
            notes.extend(gaps)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs
        ).eval()
        reader = "transformers (from_pretrained(gguf_file=...))"
    else:
        reloaded = model_from_gguf(path, written.folder)
        reader = "gguf-py GGUFReader + transformers model (transformers has no GGUF loader for it)"
    ids = reference.ids
    file = GGUFReader(path)
    checks = {
        "chat template kept": _field_text(file, "tokenizer.chat_template")
        == expected_template(source, tokenizer)
    }
    try:
        rebuilt = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        checks["tokenizer ids identical"] = (
            rebuilt(options.prompt, add_special_tokens=True)["input_ids"] == ids
        )
    except Exception as error:  # any failure to rebuild it is the finding
        notes.append(f"transformers could not rebuild the tokenizer from the GGUF: {error}")
    rope = _rope_factors_match(file, reloaded, config)
    if rope is not None:
        checks["rope factors match transformers' rope"] = rope
    greedy = None
    if gguf_type in ("f32", "f16"):
        greedy = torch_greedy(reloaded, ids, options.greedy_tokens)
    return compare(
        reference,
        torch_logits(reloaded, ids),
        reader,
        TOLERANCES[gguf_type],
        greedy=greedy,
        checks=checks,
        notes=notes,
    )


def _rope_scaled(config: dict[str, Any]) -> bool:
    from ft_export.gguf_hparams import rope_kind

    return rope_kind(config) != "default"


_RopeGap = (
    _rope_scaled,
    "transformers' GGUF config reader drops rope scaling: the model was built from the source "
    "config, its weights read from the file",
)

_TRANSFORMERS_GGUF_GAPS: dict[str, tuple[tuple[Callable[[dict[str, Any]], bool], str], ...]] = {
    "llama": (_RopeGap,),
    "mistral": (_RopeGap,),
    "qwen2": (_RopeGap,),
    "phi3": (_RopeGap,),
    "gpt2": (
        (
            lambda c: (c.get("n_inner") or 4 * c["n_embd"]) != 4 * c["n_embd"],
            "transformers' GGUF config reader drops GPT-2's feed_forward_length (n_inner): the "
            "model was built from the source config, its weights read from the file",
        ),
    ),
    "qwen3": (
        _RopeGap,
        (
            lambda c: c.get("head_dim", 128) != 128,
            "transformers' GGUF config reader ignores Qwen3's attention.key_length (head_dim): "
            "the model was built from the source config, its weights read from the file",
        ),
    ),
    "gemma2": (
        (
            lambda c: True,
            "transformers' GGUF config reader drops Gemma 2's soft-capping and layer pattern: "
            "the model was built from the source config, its weights read from the file",
        ),
    ),
}
"""Configs transformers' GGUF loader would rebuild wrongly: (affected?, what is done instead)."""

TRANSFORMERS_GGUF = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gpt2")
"""Model types whose GGUF files transformers loads (gemma, Gemma 1, is not among them; its
gemma3 loader does not take Gemma 3's text-only `gemma3_text`)."""


def model_from_gguf(path: Path, folder: Path) -> Any:
    """The transformers model of `folder`'s config with every tensor of the GGUF `path` read by
    gguf-py (dequantized) and ft's writing changes undone: an independent reader of the file."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from ft_export.gguf_convert import tensor_rules

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    rules = tensor_rules(config)
    model, _ = _model_with(folder, {})
    hf_of = {}
    for hf_name in model.state_dict():
        gguf_name = rules.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name:
            hf_of[gguf_name] = hf_name
    state = {}
    for tensor in GGUFReader(path).tensors:
        if tensor.name not in hf_of:
            continue  # generated tensors (rope factors)
        values = dequantize(tensor.data, tensor.tensor_type).reshape(
            [int(d) for d in reversed(tensor.shape)]
        )
        hf_name = hf_of[tensor.name]
        state[hf_name] = torch.from_numpy(rules.untransform(hf_name, values))
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model
