"""ft_models.describe: what a model is, from a folder, a GGUF file or the catalog, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_models.catalog import find_entry, training_memory
from ft_models.describe import describe_model
from ft_models.hub import ModelError
from ft_models.shape import ModelShape


def test_a_local_folder(tiny_llama: Path) -> None:
    report = describe_model(str(tiny_llama), batch_size=2, seq_len=128)
    assert (report["kind"], report["path"]) == ("local", str(tiny_llama.resolve()))
    assert (report["model_type"], report["custom_code"]) == ("llama", False)
    assert report["parameters_source"] == "computed from config.json"
    shape = ModelShape(**report["shape"])
    assert report["parameters"] == shape.parameter_count()
    assert report["memory"] == training_memory(shape, batch_size=2, seq_len=128)
    assert report["memory_settings"] == {"batch_size": 2, "seq_len": 128, "dtype": "bfloat16"}
    assert report["files"]["config.json"] == (tiny_llama / "config.json").stat().st_size


def test_a_catalog_alias_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = describe_model("qwen2.5-0.5b")
    entry = find_entry("qwen2.5-0.5b")
    assert entry is not None
    assert (report["kind"], report["repo_id"], report["hub"]) == ("catalog", entry.repo_id, None)
    assert report["parameters"] == entry.parameters
    assert report["parameters_source"] == "computed from the catalog"
    assert report["notes"][0].startswith(f"no Hub data: {entry.repo_id} is not in the cache")


def test_the_embedded_gguf_file(smollm2_gguf: Path) -> None:
    report = describe_model(str(smollm2_gguf))
    assert report["kind"] == "gguf" and report["imported_to"] is None  # not imported yet
    assert report["gguf"]["architecture"] == "llama" and report["gguf"]["importable"]
    assert report["parameters_source"] == "the GGUF file's tensors"
    assert report["model_type"] == "llama" and report["shape"]["num_layers"] == 30
    assert report["files"] == {smollm2_gguf.name: smollm2_gguf.stat().st_size}


def test_an_unknown_name() -> None:
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        describe_model("no-such-model")
