import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ft_models import load as load_module
from ft_models.architectures import architectures_markdown
from ft_models.load import (
    SUPPORT,
    ModelLoadError,
    load_mlx,
    load_pretrained,
    load_torch,
    mlx_config_overrides,
    weight_files,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "architectures.md"
IDS = [1, 5, 7, 9, 11, 3]

TinyModelFactory = Callable[[str], Path]


# Every supported (architecture, backend) is loaded, trained, evaluated, generated and exported
# by tests/test_architectures.py; here, the refusals and the loader's own rules.
UNSUPPORTED = [
    (family, backend) for family, row in SUPPORT.items() for backend, ok in row.items() if not ok
]


@pytest.mark.parametrize(("family", "backend"), UNSUPPORTED)
def test_unsupported_pairs_are_refused(
    family: str, backend: str, tiny_model_factory: TinyModelFactory
) -> None:
    loader = load_mlx if backend == "mlx" else load_torch

    with pytest.raises(ModelLoadError, match=f"^{family} models do not run on {backend}: "):
        loader(tiny_model_factory(family))


def test_the_doc_is_the_table() -> None:
    assert DOC.read_text(encoding="utf-8") == architectures_markdown(), (
        "docs/architectures.md is out of date: `just docs` writes "
        "ft_models.architectures.architectures_markdown() to it"
    )


def test_a_non_standard_gpt2_mlp_is_refused_on_mlx(tiny_model_factory: TinyModelFactory) -> None:
    with pytest.raises(ModelLoadError) as error:
        load_mlx(tiny_model_factory("gpt2"))

    assert str(error.value) == (
        "this gpt2 model has an MLP of n_inner=128, not 4 x n_embd=256; mlx-lm's gpt2 only "
        "builds the standard width, so its weights would not fit. Set training.backend: torch."
    )


def test_rope_theta_of_transformers_5_reaches_mlx() -> None:
    config = {
        "model_type": "qwen2",
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    }
    scaled = {
        "model_type": "llama",
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0},
    }

    assert mlx_config_overrides(config) == {"rope_theta": 10000.0}
    assert mlx_config_overrides({**config, "rope_theta": 1e6}) == {}
    assert mlx_config_overrides(scaled) == {
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
    }
    assert mlx_config_overrides({"model_type": "gpt2", "n_embd": 64, "n_positions": 512}) == {
        "n_ctx": 512
    }


def test_bfloat16_and_the_classifier_head(tiny_model_factory: TinyModelFactory) -> None:
    import torch

    model, _ = load_torch(tiny_model_factory("llama"), dtype="bf16", device="cpu")
    bert, _ = load_torch(tiny_model_factory("bert"), dtype="float32", device="cpu", num_labels=3)
    mlx_model, _ = load_mlx(tiny_model_factory("llama"), dtype="bfloat16")

    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert tuple(bert(torch.tensor([IDS])).logits.shape) == (1, 3)
    assert str(mlx_model.model.embed_tokens.weight.dtype) == "mlx.core.bfloat16"


def test_trust_remote_code_is_passed_only_when_given(
    tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    calls: list[dict[str, object]] = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    folder = tiny_model_factory("llama")

    load_torch(folder, dtype="float32", device="cpu")
    load_torch(folder, dtype="float32", device="cpu", trust_remote_code=False)

    assert "trust_remote_code" not in calls[0]
    assert calls[1]["trust_remote_code"] is False
    assert all(call["use_safetensors"] is True for call in calls)


def test_load_pretrained_picks_the_backend(tiny_model_factory: TinyModelFactory) -> None:
    import mlx.nn
    import torch

    folder = tiny_model_factory("llama")
    on_torch, _ = load_pretrained(folder, backend="torch", dtype="float32", device="cpu")
    on_mlx, _ = load_pretrained(folder, backend="mlx")

    assert isinstance(on_torch, torch.nn.Module)
    assert isinstance(on_mlx, mlx.nn.Module)


# -- folders ----------------------------------------------------------------------------------


def test_a_sharded_save_loads_on_both_backends(
    tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    import mlx.core as mx
    import numpy as np
    import torch
    import transformers

    source = tiny_model_factory("llama")
    transformers.AutoModelForCausalLM.from_pretrained(source).save_pretrained(
        tmp_path, max_shard_size="50KB"
    )
    for file in source.iterdir():
        if not file.name.startswith(("model", "config")):
            shutil.copy(file, tmp_path / file.name)

    shards = weight_files(tmp_path)
    on_torch, _ = load_torch(tmp_path, dtype="float32", device="cpu")
    whole, _ = load_torch(source, dtype="float32", device="cpu")
    on_mlx, _ = load_mlx(tmp_path)

    assert len(shards) > 1
    assert not (tmp_path / "model.safetensors").exists()
    with torch.no_grad():
        expected = whole(torch.tensor([IDS])).logits.numpy()
        assert np.array_equal(on_torch(torch.tensor([IDS])).logits.numpy(), expected)
    assert np.allclose(np.array(on_mlx(mx.array([IDS]))), expected, atol=1e-5)


def test_a_missing_shard_is_named(tiny_model_factory: TinyModelFactory, tmp_path: Path) -> None:
    shutil.copy(tiny_model_factory("llama") / "config.json", tmp_path / "config.json")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")

    with pytest.raises(
        ModelLoadError, match=r"names 2 shard\(s\) but model-00002-of-00002.safetensors is missing"
    ):
        load_torch(tmp_path)


def test_a_pickle_only_folder_is_refused_before_any_loader_sees_it(
    tiny_model_factory: TinyModelFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", never)
    shutil.copy(tiny_model_factory("llama") / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 junk: not a real pickle")

    for loader in (load_torch, load_mlx):
        with pytest.raises(
            ModelLoadError, match=r"only as pytorch_model.bin \(pickle\), which ft never loads"
        ):
            loader(tmp_path)


def test_folders_that_are_not_models(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_torch(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="model_type 't5' is not one ft loads"):
        load_mlx(tmp_path)
    shutil.copy(tiny_model_factory("llama") / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match=r"has no model\.safetensors"):
        load_torch(tmp_path)


def test_the_table_covers_every_tiny_architecture() -> None:
    from ft_testing.tiny_models import ARCHITECTURES

    assert set(SUPPORT) == set(ARCHITECTURES)
    assert {"bert"} == load_module.CLASSIFIERS
