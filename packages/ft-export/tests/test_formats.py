"""Every architecture x format on the tiny models: each export is written, reloaded by an
independent reader and matches ft's merged model within the format's tolerance."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from ft_config import PluginWarning, plugins
from ft_export import (
    ExportError,
    ExportOptions,
    ExportResult,
    ExportSource,
    VerificationError,
    exporters,
    get_exporter,
    no_progress,
)
from ft_export.verify import TOLERANCES

ARCHS = ("llama", "mistral", "phi3", "qwen2", "qwen3", "gemma", "gpt2")
GGUF_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "phi3": "phi3",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gpt2": "gpt2",
}


def export(fmt: str, source: ExportSource, out: Path, **options: object) -> ExportResult:
    return get_exporter(fmt).export(source, out, ExportOptions(**options), no_progress)  # type: ignore[arg-type]


def gguf_field(path: Path, key: str) -> object:
    field = GGUFReader(path).fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else value.tolist()[0]


@pytest.fixture
def source(
    tiny_model: Callable[[str], Path], tiny_adapter: Callable[..., Path]
) -> Callable[[str], ExportSource]:
    def make(arch: str) -> ExportSource:
        return ExportSource(tiny_model(arch), (tiny_adapter(arch),), name=f"tiny-{arch}-ft")

    return make


def test_every_format_is_registered_as_an_entry_point() -> None:
    found = exporters()
    assert sorted(found) == [
        "gguf",
        "gguf-lora",
        "hf",
        "mlx",
        "mlx-adapter",
        "ollama",
        "peft",
    ]
    assert all(e.name == name and e.description for name, e in found.items())
    with pytest.raises(ExportError, match="unknown export format 'onnx': choose one of gguf, "):
        get_exporter("onnx")


def test_a_broken_exporter_plugin_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist_info = tmp_path / "acme_export-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-export\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        "[ft.exporters]\nonnx = acme_no_such_module:OnnxExporter\nodd = json:dumps\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FT_NO_PLUGINS", raising=False)
    plugins.cache_clear()
    try:
        with (
            pytest.warns(PluginWarning, match="'onnx' .*acme-export.* failed to load"),
            pytest.raises(ExportError, match="No module named 'acme_no_such_module'"),
        ):
            get_exporter("onnx")
        with pytest.raises(ExportError, match="exporter plugin 'odd' is not an Exporter"):
            get_exporter("odd")
        with (
            pytest.warns(PluginWarning, match="'odd' is not an Exporter"),
            pytest.warns(PluginWarning, match="'onnx' .* failed to load"),
        ):
            found = exporters()
        assert "onnx" not in found and "odd" not in found and "gguf" in found
        assert get_exporter("hf").name == "hf"
        monkeypatch.setenv("FT_NO_PLUGINS", "1")
        with pytest.raises(ExportError, match="unknown export format 'onnx'"):
            get_exporter("onnx")
    finally:
        monkeypatch.undo()
        plugins.cache_clear()


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_export_loads_in_peft_and_matches_the_merge(
    arch: str, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("peft", source(arch), tmp_path / "out")
    names = sorted(p.name for p in result.files)
    assert "adapter_config.json" in names and "adapter_model.safetensors" in names
    assert "chat_template.jinja" in names
    check = result.verification
    assert check is not None and check.passed, check
    assert check.error < TOLERANCES["adapter"]
    assert check.checks == {"chat template kept": True}


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_export_is_the_merged_model(
    arch: str,
    source: Callable[[str], ExportSource],
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    src = source(arch)
    result = export("hf", src, tmp_path / "out")
    check = result.verification
    assert check is not None and check.passed, check
    assert check.error < 1e-6  # float32: the saved weights are the merged ones, bit for bit
    # The adapter changed the model: the export is far from the base (merging mattered).
    ids = torch.tensor([[5, 9, 40, 100, 200]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model(arch))(ids).logits
        ours = AutoModelForCausalLM.from_pretrained(result.path)(ids).logits
    assert float((ours - base).norm() / base.norm()) > 0.05


def test_hf_export_in_bfloat16_and_sharded(
    source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export(
        "hf", source("llama"), tmp_path / "out", dtype="bfloat16", max_shard_size="60KB"
    )
    names = sorted(p.name for p in result.files)
    assert "model.safetensors.index.json" in names
    assert sum(name.startswith("model-0") for name in names) > 1
    config = json.loads((result.path / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    check = result.verification
    assert check is not None and check.passed
    assert 1e-4 < check.error < TOLERANCES["bfloat16"]  # rounded, but within bf16's tolerance


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0", "q4_0"])
def test_gguf_export_is_read_back_and_checked(
    arch: str, quant: str, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("gguf", source(arch), tmp_path / "out", quant=quant)
    [path] = result.files
    assert path.name == f"tiny-{arch}-ft-{quant}.gguf"
    assert gguf_field(path, "general.architecture") == GGUF_ARCH[arch]
    assert gguf_field(path, "general.name") == f"tiny-{arch}-ft"
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.error <= TOLERANCES[quant]
    assert check.reader.startswith("gguf-py")  # the quick check, the default
    assert check.checks == {
        "every tensor within its type's error": True,
        "chat template kept": True,
        "vocabulary identical": True,
    }
    if quant == "f32":
        assert check.error < 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_full_check_reloads_in_transformers(
    arch: str, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("gguf", source(arch), tmp_path / "out", quant="f16", check="full")
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.checks["chat template kept"]
    if arch != "gemma":  # transformers has no GGUF loader (nor tokenizer) for Gemma 1
        assert check.checks["tokenizer ids identical"]
        assert check.reader.startswith("transformers")
    assert check.greedy_matched == check.greedy_total == 8


@pytest.mark.parametrize("quant", ["bf16", "q5_0", "q5_1", "q4_1"])
def test_other_gguf_types(
    quant: str, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("gguf", source("qwen2"), tmp_path / "out", quant=quant)
    check = result.verification
    assert check is not None and check.passed, check.summary()
    file_type = {"bf16": 32, "q5_0": 8, "q5_1": 9, "q4_1": 3}[quant]  # llama.cpp's LlamaFileType
    assert gguf_field(result.files[0], "general.file_type") == file_type


def test_gguf_keeps_the_training_chat_template_and_the_vocabulary(
    tiny_model_factory: Callable[[str], Path], tiny_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    base = tiny_model_factory("llama")
    src = ExportSource(base, (tiny_adapter("llama"),), chat_template=template, name="t")
    result = export("gguf", src, tmp_path / "out", quant="q8_0")
    path = result.files[0]
    assert gguf_field(path, "tokenizer.chat_template") == template
    reader = GGUFReader(path)
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    vocab = AutoTokenizer.from_pretrained(base).get_vocab()
    assert tokens == sorted(vocab, key=vocab.__getitem__)
    assert gguf_field(path, "tokenizer.ggml.model") == "gpt2"
    assert gguf_field(path, "tokenizer.ggml.pre") == "gpt2"
    assert gguf_field(path, "tokenizer.ggml.eos_token_id") == vocab["<|im_end|>"]
    assert gguf_field(path, "tokenizer.ggml.bos_token_id") == vocab["<|endoftext|>"]
    types = reader.fields["tokenizer.ggml.token_type"]
    assert [int(types.parts[i][0]) for i in types.data[:3]] == [3, 3, 3]  # CONTROL
    assert result.verification is not None and result.verification.checks["chat template kept"]


def test_a_wrong_conversion_fails_the_check(
    source: Callable[[str], ExportSource], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leave out llama.cpp's q/k permutation: the file is written, and the check must catch it.
    monkeypatch.setattr("ft_export.gguf_convert.permute_qk", lambda weights, n_head: weights)
    with pytest.raises(VerificationError, match="failed its check") as caught:
        export("gguf", source("llama"), tmp_path / "out", quant="f16")
    check = caught.value.result.verification
    assert check is not None and not check.passed
    assert check.error > TOLERANCES["f16"]
    assert (tmp_path / "out" / "tiny-llama-ft-f16.gguf").is_file()  # kept for inspection


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_lora_adapter(
    arch: str, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("gguf-lora", source(arch), tmp_path / "out")
    [path] = result.files
    assert gguf_field(path, "general.type") == "adapter"
    assert gguf_field(path, "adapter.type") == "lora"
    assert gguf_field(path, "adapter.lora.alpha") == 8.0  # lora_alpha of the tiny adapters
    names = [t.name for t in GGUFReader(path).tensors]
    assert all(n.endswith((".weight.lora_a", ".weight.lora_b")) for n in names)
    check = result.verification
    assert check is not None and check.passed, check.summary()


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gpt2"])
@pytest.mark.parametrize("bits", [None, "4"])
def test_mlx_export_loads_with_mlx_lm(
    arch: str, bits: str | None, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("mlx", source(arch), tmp_path / "out", quant=bits)
    config = json.loads((result.path / "config.json").read_text())
    assert ("quantization" in config) == (bits is not None)
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.reader == "mlx_lm.load"
    assert check.error <= (TOLERANCES["mlx-4"] if bits else TOLERANCES["mlx-float32"])


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gpt2"])
def test_mlx_adapter_layout(
    arch: str, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("mlx-adapter", source(arch), tmp_path / "out")
    assert sorted(p.name for p in result.files) == ["adapter_config.json", "adapters.safetensors"]
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora"
    assert config["lora_parameters"]["rank"] == 4
    assert config["lora_parameters"]["scale"] == 2.0
    check = result.verification
    assert check is not None and check.passed, check.summary()


def test_mlx_says_why_it_cannot_hold_a_narrow_gpt2(
    source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="n_inner=128"):
        export("mlx-adapter", source("gpt2"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_ollama_gguf_and_modelfile(
    arch: str, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    result = export("ollama", source(arch), tmp_path / "out")
    assert sorted(p.name for p in result.files) == ["Modelfile", f"tiny-{arch}-ft-q8_0.gguf"]
    text = (result.path / "Modelfile").read_text()
    assert text.startswith(f'FROM ./tiny-{arch}-ft-q8_0.gguf\nTEMPLATE """')
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in text
    assert text.endswith('PARAMETER stop "<|im_start|>"\nPARAMETER stop "<|im_end|>"\n')
    check = result.verification
    assert check is not None and check.passed, check.summary()
    assert check.checks["Modelfile stop tokens are tokens"]


def test_modelfile_families() -> None:
    from ft_export.ollama import modelfile

    llama3 = "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}"
    text, notes = modelfile("m.gguf", llama3)
    assert 'PARAMETER stop "<|eot_id|>"' in text and not notes
    text, notes = modelfile("m.gguf", "{{ '[INST] ' + m['content'] + ' [/INST]' }}")
    assert "[INST] " in text and 'PARAMETER stop "[/INST]"' in text
    text, notes = modelfile("m.gguf", "{{ m['content'] }}")
    assert text == "FROM ./m.gguf\n"
    assert "no TEMPLATE" in notes[0]


def test_combining_adapters(
    tiny_model_factory: Callable[[str], Path], tiny_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    from ft_export.merge import merged_model
    from ft_export.verify import torch_logits

    base = tiny_model_factory("llama")
    a, b = tiny_adapter("llama", 0), tiny_adapter("llama", 1)
    ids = [5, 9, 40, 100]
    # linear with weights 1, 0 is adapter A alone
    only_a, _ = merged_model(ExportSource(base, (a,)))
    linear, notes = merged_model(ExportSource(base, (a, b), adapter_weights=(1.0, 0.0)))
    np.testing.assert_allclose(torch_logits(linear, ids), torch_logits(only_a, ids), atol=1e-5)
    assert notes == ["combined 2 adapters with linear (weights 1, 0)"]
    # TIES: a new adapter, saved in PEFT's layout and checked with peft
    ties = ExportSource(base, (a, b), (0.5, 0.5), combination="ties", density=0.5)
    result = export("peft", ties, tmp_path / "ties")
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert result.notes == ["combined 2 adapters with ties (weights 0.5, 0.5, density 0.5)"]
    assert result.verification is not None and result.verification.passed
    ties_model, _ = merged_model(ties)
    assert not np.allclose(torch_logits(ties_model, ids), torch_logits(only_a, ids), atol=1e-3)


def test_errors_say_what_to_do(
    tiny_model_factory: Callable[[str], Path], tiny_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    base = tiny_model_factory("llama")
    with pytest.raises(ExportError, match="is a plain model; name a run of a LoRA method"):
        export("peft", ExportSource(base), tmp_path / "a")
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ExportError, match="cannot be merged; export it with --format peft"):
        export("hf", ExportSource(base, (prefix,)), tmp_path / "b")
    with pytest.raises(ExportError, match="not a GGUF type ft writes"):
        export("gguf", ExportSource(base), tmp_path / "c", quant="q3_k")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export("hf", ExportSource(base, (tiny_adapter("llama"),)), taken)


def test_qlora_merge_says_it_dequantized(
    source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    src = source("llama")
    qlora = ExportSource(src.base, src.adapters, quantized_base=True)
    result = export("hf", qlora, tmp_path / "out", verify=False)
    assert result.verification is None
    assert any("4-bit (QLoRA)" in note and "dequantized" in note for note in result.notes)


def test_push_to_hub(
    hub_env: object, source: Callable[[str], ExportSource], tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download

    from ft_export.hub import push_to_hub

    result = export("peft", source("llama"), tmp_path / "out", verify=False)
    url = push_to_hub(result.path, "ft-test/pushed-adapter", "hf_test_token")
    assert "/ft-test/pushed-adapter/commit/" in url
    got = hf_hub_download("ft-test/pushed-adapter", "adapter_model.safetensors")
    assert Path(got).read_bytes() == (result.path / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ExportError, match="needs a Hugging Face token"):
        push_to_hub(result.path, "ft-test/other", None)


def test_the_default_dtype_is_the_saved_one(tmp_path: Path) -> None:
    from ft_export.merge import saved_dtype

    for config, expected in (
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"torch_dtype": "float16"}, "float16"),
        ({"dtype": "int8"}, "float32"),
        ({}, "float32"),
    ):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert saved_dtype(tmp_path) == expected
