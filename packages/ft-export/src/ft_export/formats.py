"""The built-in exporters, one per format, each writing into a fresh folder and checking it.

Every exporter builds its export in a temporary folder beside `out` and renames it into place
once written and checked, so `out` holds a whole export or nothing new. A failed check still
publishes the export (so it can be inspected) and raises `VerificationError`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ft_export.building import (
    Merged,
    build_export,
    expected_template,
    merge_for_check,
    require_adapter,
    save_adapter,
    slug,
)
from ft_export.types import (
    ExportOptions,
    ExportResult,
    ExportSource,
    Progress,
    Verification,
)

if TYPE_CHECKING:
    from ft_models.adapters import AdapterConfig

# -- peft -------------------------------------------------------------------------------------


class PeftExporter:
    name = "peft"
    description = "the adapter in PEFT's layout (adapter_config.json + safetensors), with tokenizer"

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        require_adapter(source, self.name)

        def write(build: Path) -> tuple[Verification | None, list[str]]:
            notes = save_adapter(source, build)
            from ft_export.merge import load_tokenizer

            tokenizer = load_tokenizer(source)
            tokenizer.save_pretrained(build)
            progress("adapter written", 1, 1)
            if not options.verify:
                return None, notes
            merged = merge_for_check(source, options, progress)
            return _check_peft(source, build, merged), notes + merged.notes

        return build_export(out, self.name, write)


def _check_peft(source: ExportSource, folder: Path, merged: Merged) -> Verification:
    from ft_export.merge import import_torch, load_base
    from ft_export.verify import TOLERANCES, compare, torch_logits

    _, transformers, peft = import_torch()
    model = peft.PeftModel.from_pretrained(load_base(source.base), folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    checks = {
        "chat template kept": tokenizer.chat_template == expected_template(source, merged.tokenizer)
    }
    return compare(
        merged.reference,
        torch_logits(model, merged.reference.ids),
        "peft (PeftModel.from_pretrained, adapter not merged)",
        TOLERANCES["adapter"],
        checks=checks,
    )


# -- hf ---------------------------------------------------------------------------------------


class HFExporter:
    name = "hf"
    description = "the merged model as a Hugging Face safetensors folder, tokenizer included"

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        from ft_export.merge import save_hf, saved_dtype, torch_dtype_of

        dtype = options.dtype or saved_dtype(source.base)
        torch_dtype_of(dtype)  # a bad dtype fails before any work

        def write(build: Path) -> tuple[Verification | None, list[str]]:
            merged = merge_for_check(source, options, progress)
            progress("saving safetensors", 0, 1)
            save_hf(merged.model, merged.tokenizer, build, dtype, options.max_shard_size)
            progress("saving safetensors", 1, 1)
            if not options.verify:
                return None, merged.notes
            return _check_hf(source, build, merged, dtype), merged.notes

        return build_export(out, self.name, write)


def _check_hf(source: ExportSource, folder: Path, merged: Merged, dtype: str) -> Verification:
    from ft_export.merge import import_torch
    from ft_export.verify import TOLERANCES, compare, torch_logits

    torch, transformers, _ = import_torch()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    checks = {
        "chat template kept": tokenizer.chat_template == expected_template(source, merged.tokenizer)
    }
    return compare(
        merged.reference,
        torch_logits(model, merged.reference.ids),
        "transformers (AutoModelForCausalLM.from_pretrained)",
        TOLERANCES[dtype] if dtype in TOLERANCES else TOLERANCES["float32"],
        checks=checks,
    )


# -- gguf -------------------------------------------------------------------------------------


class GGUFExporter:
    name = "gguf"
    description = (
        "the merged model as one GGUF file (llama.cpp): f32/f16/bf16, q8_0, the K-quants "
        "q6_k/q5_k_m/q4_k_m, q5/q4; `-o NAME.gguf` names the file"
    )

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        from ft_export.building import names_a_file
        from ft_export.gguf_check import check_gguf, checked_depth, written_gguf
        from ft_export.gguf_convert import chosen_gguf_type

        gguf_type = chosen_gguf_type(options.quant, "f16")
        checked_depth(options)

        def write(build: Path) -> tuple[Verification | None, list[str]]:
            with written_gguf(source, build, gguf_type, progress) as written:
                if not options.verify:
                    return None, written.notes
                verification = check_gguf(source, written, gguf_type, options, progress)
                return verification, written.notes

        return build_export(out, self.name, write, single_file=names_a_file(out, ".gguf"))


class GGUFLoraExporter:
    name = "gguf-lora"
    description = "the LoRA adapter as a GGUF adapter for llama.cpp's --lora"

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        from ft_export.gguf_convert import convert_lora_to_gguf
        from ft_models.adapters import read_adapter_config

        require_adapter(source, self.name)
        gguf_type = (options.quant or "f16").lower()
        config = json.loads((source.base / "config.json").read_text(encoding="utf-8"))

        def write(build: Path) -> tuple[Verification | None, list[str]]:
            with tempfile.TemporaryDirectory(dir=build.parent) as tmp:
                notes = save_adapter(source, Path(tmp))
                path = build / f"{slug(source.display_name)}-lora-{gguf_type}.gguf"
                convert_lora_to_gguf(Path(tmp), config, path, gguf_type, name=source.display_name)
                adapter = read_adapter_config(Path(tmp))
            progress("adapter written", 1, 1)
            if not options.verify:
                return None, notes
            merged = merge_for_check(source, options, progress)
            return _check_gguf_lora(source, path, adapter, merged, gguf_type), notes

        from ft_export.building import names_a_file

        return build_export(out, self.name, write, single_file=names_a_file(out, ".gguf"))


def _check_gguf_lora(
    source: ExportSource,
    path: Path,
    adapter: AdapterConfig,
    merged: Merged,
    gguf_type: str,
) -> Verification:
    """Read the adapter back with gguf-py, turn it into a PEFT adapter again (undoing the q/k
    permutation) and apply it with peft to the base: the logits must match the merge."""
    import torch
    from gguf import GGUFReader, get_tensor_name_map
    from gguf.quants import dequantize
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from ft_export.gguf_convert import architecture_of
    from ft_export.merge import load_base
    from ft_export.verify import TOLERANCES, compare, torch_logits

    raw = json.loads((source.base / "config.json").read_text(encoding="utf-8"))
    arch = architecture_of(raw)
    base = load_base(source.base)
    layers = raw.get("num_hidden_layers") or raw["n_layer"]
    names = get_tensor_name_map(arch.arch, layers)
    hf_of = {}
    for hf_name, _ in base.named_parameters():
        gguf = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf:
            hf_of[gguf] = hf_name.removesuffix(".weight")
    file = GGUFReader(path)
    alpha_field = file.fields["adapter.lora.alpha"]
    alpha = float(alpha_field.parts[alpha_field.data[0]][0])
    state = {}
    for tensor in file.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).reshape(
            [int(d) for d in reversed(tensor.shape)]
        )
        gguf_name, kind = tensor.name.rsplit(".", 1)
        module = hf_of[gguf_name]
        if kind == "lora_b" and arch.permute_qk and module.endswith(("q_proj", "k_proj")):
            from ft_models.gguf.architectures import reverse_llama_permutation

            heads = raw["num_attention_heads"]
            if module.endswith("k_proj"):
                heads = raw.get("num_key_value_heads") or heads
            values = reverse_llama_permutation(values, heads)
        letter = "A" if kind == "lora_a" else "B"
        state[f"base_model.model.{module}.lora_{letter}.weight"] = torch.from_numpy(
            values.astype("float32")
        )
    rank = int(next(v for k, v in state.items() if ".lora_A." in k).shape[0])
    modules = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state})
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=modules,
        fan_in_fan_out=adapter.fan_in_fan_out,
        lora_dropout=0.0,
    )
    model = get_peft_model(base, config)
    result = set_peft_model_state_dict(model, {k: v for k, v in state.items()})
    checks = {"every tensor has a place": not result.unexpected_keys}
    return compare(
        merged.reference,
        torch_logits(model.eval(), merged.reference.ids),
        "gguf-py GGUFReader -> peft LoRA on the base",
        TOLERANCES[gguf_type],
        checks=checks,
    )
