"""The real thing: SmolLM2-135M-Instruct (the embedded GGUF, imported through ft_models) exported
to GGUF q8_0 by ft's converter and checked end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from ft_export import ExportOptions, ExportSource, get_exporter, no_progress
from ft_export.verify import TOLERANCES


@pytest.mark.slow
def test_smollm2_to_gguf_q8_0(smollm2_gguf: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from ft_models.resolve import resolve_model

    model = resolve_model(str(smollm2_gguf), progress=False)
    source = ExportSource(model.path, name="SmolLM2-135M-Instruct")
    result = get_exporter("gguf").export(
        source, tmp_path / "out", ExportOptions(quant="q8_0"), no_progress
    )
    [path] = result.files
    assert path.name == "SmolLM2-135M-Instruct-q8_0.gguf"
    reader = GGUFReader(path)
    assert len(reader.tensors) == 272  # 30 layers x 9 + embeddings + final norm (tied head)
    kinds = {t.tensor_type.name for t in reader.tensors}
    assert kinds == {"Q8_0", "F32"}  # 2-D weights quantized, norms kept in f32
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    assert template == AutoTokenizer.from_pretrained(model.path).chat_template
    assert "<|im_start|>" in template
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.error < TOLERANCES["q8_0"]
    assert check.top1_agreement == 1.0
    assert check.checks == {"chat template kept": True, "tokenizer ids identical": True}
