"""GGUF as llama.cpp writes it: rope scaling, Gemma 2/3's keys, the K-quant recipes, the file
at the path given, and the quick and full checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from ft_export import (
    ExportError,
    ExportOptions,
    ExportResult,
    ExportSource,
    get_exporter,
    no_progress,
)
from ft_export.gguf_types import tensor_types
from ft_export.verify import TOLERANCES

Model = Callable[[str], Path]


def export(model: Path, out: Path, **options: object) -> ExportResult:
    return get_exporter("gguf").export(
        ExportSource(model, name="tiny"),
        out,
        ExportOptions(**options),  # type: ignore[arg-type]
        no_progress,
    )


def fields(path: Path) -> dict[str, object]:
    """Every scalar or array field of the file, decoded."""
    out: dict[str, object] = {}
    for key, field in GGUFReader(path).fields.items():
        values = [field.parts[i] for i in field.data]
        if field.types[0].name == "STRING":
            decoded: list[object] = [bytes(v).decode() for v in values]
        else:
            decoded = [v.tolist()[0] for v in values]
        out[key] = decoded if field.types[0].name == "ARRAY" else decoded[0]
    return out


def tensor(path: Path, name: str) -> tuple[str, np.ndarray]:
    [found] = [t for t in GGUFReader(path).tensors if t.name == name]
    return found.tensor_type.name, dequantize(found.data, found.tensor_type)


def test_llama3_rope_scaling_is_the_rope_freqs_tensor(tiny_model: Model, tmp_path: Path) -> None:
    result = export(tiny_model("llama-rope3"), tmp_path / "m.gguf", quant="f32")
    kind, factors = tensor(result.path, "rope_freqs.weight")
    assert kind == "F32"
    # head width 16: 8 frequencies, wavelengths 6.3 .. 19869 against 64 / 4 and 64 / 1
    assert factors[0] == 1.0 and np.all(factors[3:] == 8.0)
    assert 1.0 < factors[1] < factors[2] < 8.0
    assert "llama.rope.scaling.type" not in fields(result.path)  # llama.cpp writes no key
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.checks["rope factors match transformers' rope"]


def test_yarn_is_written_as_keys(tiny_model: Model, tmp_path: Path) -> None:
    result = export(tiny_model("qwen2-yarn"), tmp_path / "m.gguf", quant="f16")
    meta = fields(result.path)
    assert meta["qwen2.rope.scaling.type"] == "yarn"
    assert meta["qwen2.rope.scaling.factor"] == 4.0
    assert meta["qwen2.rope.scaling.original_context_length"] == 128
    assert result.verification is not None and result.verification.passed


def test_phi3_longrope_factors_and_attention_factor(tiny_model: Model, tmp_path: Path) -> None:
    result = export(tiny_model("phi3-longrope"), tmp_path / "m.gguf", quant="f16")
    meta = fields(result.path)
    assert meta["phi3.rope.scaling.original_context_length"] == 128
    assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(
        math.sqrt(1 + math.log(512 / 128) / math.log(128))
    )
    assert meta["phi3.attention.sliding_window"] == 0  # llama.cpp's mark of a Phi-3 (not Phi-4)
    _, long = tensor(result.path, "rope_factors_long.weight")
    _, short = tensor(result.path, "rope_factors_short.weight")
    assert long.tolist() == pytest.approx([1.0, 1.1, 1.3, 1.8, 2.6, 3.9, 5.2, 6.0])
    assert short.tolist() == pytest.approx([1.0, 1.0, 1.02, 1.05, 1.1, 1.2, 1.3, 1.4])
    assert result.verification is not None and result.verification.passed


def test_gemma2_soft_capping_and_sliding_window(tiny_model: Model, tmp_path: Path) -> None:
    result = export(tiny_model("gemma2"), tmp_path / "m.gguf", quant="f16")
    meta = fields(result.path)
    assert meta["gemma2.attn_logit_softcapping"] == 50.0
    assert meta["gemma2.final_logit_softcapping"] == 30.0
    assert meta["gemma2.attention.sliding_window"] == 24
    # local, global: llama.cpp's default for gemma2, so no pattern is written
    assert "gemma2.attention.sliding_window_pattern" not in meta
    _, norm = tensor(result.path, "blk.0.attn_norm.weight")
    assert np.allclose(norm, 1.0)  # Gemma's RMSNorm weights (zeros) stored as 1 + w
    assert result.verification is not None and result.verification.passed


def test_gemma3_keys(tiny_model: Model, tmp_path: Path) -> None:
    result = export(tiny_model("gemma3"), tmp_path / "m.gguf", quant="f16")
    meta = fields(result.path)
    assert meta["general.architecture"] == "gemma3"
    assert meta["gemma3.attention.sliding_window"] == 24
    assert meta["gemma3.rope.freq_base"] == 1_000_000.0
    assert meta["gemma3.rope.freq_base_swa"] == 10_000.0
    # one local and one global layer, not llama.cpp's default of five local per global
    assert meta["gemma3.attention.sliding_window_pattern"] == [True, False]
    assert "gemma3.final_logit_softcapping" not in meta
    assert result.verification is not None and result.verification.passed


def test_k_quant_recipes_mix_types_as_llama_cpp(tiny_model: Model, tmp_path: Path) -> None:
    model = tiny_model("llama-wide")
    result = export(model, tmp_path / "m.gguf", quant="q4_k_m")
    types = {t.name: t.tensor_type.name for t in GGUFReader(result.path).tensors}
    # 2 layers: llama.cpp's use_more_bits picks the last one for Q6_K
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == "Q4_K"
    assert types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == types["blk.1.attn_q.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert fields(result.path)["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.error < TOLERANCES["q4_k_m"]
    assert check.checks["every tensor within its type's error"]


@pytest.mark.parametrize(
    ("quant", "main", "file_type"), [("q5_k_m", "Q5_K", 17), ("q6_k", "Q6_K", 18)]
)
def test_other_k_quants(
    quant: str, main: str, file_type: int, tiny_model: Model, tmp_path: Path
) -> None:
    result = export(tiny_model("llama-wide"), tmp_path / "m.gguf", quant=quant)
    types = {t.name: t.tensor_type.name for t in GGUFReader(result.path).tensors}
    assert types["blk.0.attn_q.weight"] == main and types["blk.1.attn_v.weight"] == "Q6_K"
    assert fields(result.path)["general.file_type"] == file_type
    assert result.verification is not None and result.verification.passed


def test_recipe_of_a_32_layer_model() -> None:
    """Llama-2-7B's shapes: half the value and down projections get Q6_K in Q4_K_M, the ones
    llama.cpp's use_more_bits picks; the tied-free output head Q6_K."""
    shapes = [("token_embd.weight", (32000, 4096)), ("output.weight", (32000, 4096))]
    for i in range(32):
        shapes += [
            (f"blk.{i}.attn_v.weight", (4096, 4096)),
            (f"blk.{i}.ffn_down.weight", (4096, 11008)),
            (f"blk.{i}.attn_norm.weight", (4096,)),
        ]
    types = tensor_types("q4_k_m", shapes, 32)
    more = [i for i in range(32) if types[f"blk.{i}.attn_v.weight"].name == "Q6_K"]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    # 11008 = 43 x 256: ffn_down keeps K-quants; the same layers as attn_v get Q6_K
    assert [i for i in range(32) if types[f"blk.{i}.ffn_down.weight"].name == "Q6_K"] == more
    assert types["output.weight"].name == "Q6_K" and types["token_embd.weight"].name == "Q4_K"
    # SmolLM2's width (576 = 2.25 x 256) takes llama.cpp's 32-value fallbacks
    small = tensor_types("q4_k_m", [("blk.0.attn_q.weight", (576, 576))], 1)
    assert small["blk.0.attn_q.weight"].name == "Q5_0"
    tied = tensor_types("q6_k", [("token_embd.weight", (49152, 576))], 1)
    assert tied["token_embd.weight"].name == "Q8_0"


def test_output_ending_in_gguf_is_the_file(tiny_model: Model, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "model.gguf"
    result = export(tiny_model("llama"), out, quant="q8_0")
    assert result.path == out and result.files == [out] and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf"]  # no leftovers
    assert result.seconds is not None and result.verification is not None
    assert result.verification.seconds is not None and result.verification.seconds > 0
    with pytest.raises(ExportError, match=r"model\.gguf already exists"):
        export(tiny_model("llama"), out, quant="q8_0")
    folder = tmp_path / "folder.gguf"
    folder.mkdir()  # an existing folder stays a folder, whatever its name
    result = export(tiny_model("llama"), folder, quant="q8_0", verify=False)
    assert [p.name for p in result.files] == ["tiny-q8_0.gguf"]


def test_full_check_reloads_with_transformers(tiny_model: Model, tmp_path: Path) -> None:
    result = export(tiny_model("llama"), tmp_path / "m.gguf", quant="f16", check="full")
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.reader.startswith("transformers")
    assert check.checks["tokenizer ids identical"]
    assert check.greedy_matched == check.greedy_total == 8
    with pytest.raises(ExportError, match="--check deep: choose quick or full"):
        export(tiny_model("llama"), tmp_path / "n.gguf", check="deep")


def test_every_gguf_type_says_what_it_costs() -> None:
    """`ft export --help` lists each type with its size and error on SmolLM2 (quant_costs)."""
    from ft_export.gguf_types import GGUF_TYPES
    from ft_export.quant_costs import QUANT_COSTS, quant_help

    assert list(QUANT_COSTS) == list(GGUF_TYPES)
    assert quant_help().startswith("f32 (540 MB, exact); f16 (271 MB")
