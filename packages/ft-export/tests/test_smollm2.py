"""The real thing: SmolLM2-135M-Instruct (the embedded GGUF, imported through ft_models) exported
to GGUF Q4_K_M by ft's converter and checked end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from ft_export import ExportOptions, ExportSource, get_exporter, no_progress
from ft_export.verify import TOLERANCES


@pytest.mark.slow
def test_smollm2_to_gguf_q4_k_m(smollm2_gguf: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from ft_models.resolve import resolve_model

    model = resolve_model(str(smollm2_gguf), progress=False)
    source = ExportSource(model.path, name="SmolLM2-135M-Instruct")
    result = get_exporter("gguf").export(
        source, tmp_path / "out", ExportOptions(quant="q4_k_m"), no_progress
    )
    [path] = result.files
    assert path.name == "SmolLM2-135M-Instruct-q4_k_m.gguf"
    reader = GGUFReader(path)
    assert len(reader.tensors) == 272  # 30 layers x 9 + embeddings + final norm (tied head)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    # llama-quantize's Q4_K_M of a 576-wide model: rows of 576 are not whole 256-value
    # super-blocks, so Q4_K falls back to Q5_0 and the tied embeddings take Q8_0; only the FFN
    # down projections (rows of 1536) are K-quants, Q6_K in the 14 layers use_more_bits picks
    assert kinds["token_embd.weight"] == "Q8_0"
    assert kinds["blk.7.attn_q.weight"] == kinds["blk.3.attn_v.weight"] == "Q5_0"
    assert kinds["blk.0.attn_v.weight"] == "Q8_0"  # Q6_K in a use_more_bits layer, then Q8_0
    six = [i for i in range(30) if kinds[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert six == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert {kinds[f"blk.{i}.ffn_down.weight"] for i in range(30) if i not in six} == {"Q4_K"}
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    assert template == AutoTokenizer.from_pretrained(model.path).chat_template
    assert "<|im_start|>" in template
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.error < TOLERANCES["q4_k_m"]
    assert check.checks == {
        "every tensor within its type's error": True,
        "chat template kept": True,
        "vocabulary identical": True,
    }
