"""ft's per-architecture changes to mlx-lm (ft_models.mlx_arch): each one is needed (without it
the logits differ from torch's), and each config it cannot translate is refused with a reason."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ft_models import mlx_arch
from ft_models.convert import check_logits
from ft_models.load import ModelLoadError, load_mlx, mlx_config_overrides

TinyModelFactory = Callable[[str], Path]


def test_gemma3_settings_come_from_transformers_5s_fields() -> None:
    config = {
        "model_type": "gemma3_text",
        "num_hidden_layers": 8,
        "rope_parameters": {
            "full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0},
            "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
        },
        "layer_types": (["sliding_attention"] * 3 + ["full_attention"]) * 2,
    }

    assert mlx_config_overrides(config) == {
        "rope_theta": 1e6,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "rope_local_base_freq": 1e4,
        "sliding_window_pattern": 4,
    }
    # gemma-3-1b's 26 layers: a global layer every 6, the last two local.
    layers = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(26)]
    assert mlx_config_overrides({"model_type": "gemma3_text", "layer_types": layers}) == {
        "sliding_window_pattern": 6
    }


@pytest.mark.parametrize(
    ("layer_types", "message"),
    [
        (["sliding_attention"] * 2, "needs a global \\(full_attention\\) layer"),
        (
            ["sliding_attention", "full_attention", "full_attention"],
            "do not repeat one global layer every 2",
        ),
    ],
)
def test_gemma3_layouts_mlx_lm_cannot_build_are_refused(
    layer_types: list[str], message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message) as error:
        mlx_config_overrides({"model_type": "gemma3_text", "layer_types": layer_types})
    assert str(error.value).endswith("Set training.backend: torch.")


def test_gemma2_needs_the_sliding_window(
    tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 32 check tokens run past the tiny Gemma 2's 24-token window: mlx-lm's own class,
    which attends to everything, is caught; ft's is torch's to rounding."""
    from mlx_lm.utils import _get_classes

    folder = tiny_model_factory("gemma2")
    assert check_logits(folder).max_abs_diff < 1e-6
    monkeypatch.setattr(mlx_arch, "mlx_model_classes", _get_classes)
    unfixed = check_logits(folder, raise_on_mismatch=False)
    assert not unfixed.ok and unfixed.max_abs_diff > 0.1


def test_gemma3_embedding_scale_is_transformers(
    tiny_model_factory: TinyModelFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At width 72, sqrt(72) = 8.485 rounds to 8.5 in bfloat16: mlx-lm's scale alone misses the
    tolerance, ft's float32 scale does not (in a bfloat16 model both round the same)."""
    import torch
    import transformers

    source = tiny_model_factory("gemma3")
    config = transformers.AutoConfig.from_pretrained(source)
    config.hidden_size = 72
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    for file in source.iterdir():
        if file.name != "config.json" and not file.name.startswith("model"):
            shutil.copy(file, tmp_path / file.name)

    assert check_logits(tmp_path).max_abs_diff < 2e-6
    import mlx.core as mx

    embedding = load_mlx(tmp_path, dtype="bfloat16")[0].model.embed_tokens
    ids = mx.array([[3, 5, 7]])
    assert mx.array_equal(embedding(ids), embedding.weight[ids])  # bfloat16: left as it is
    monkeypatch.setattr(
        mlx_arch, "_gemma3_with_exact_scale", lambda model_class, width: model_class
    )
    unfixed = check_logits(tmp_path, raise_on_mismatch=False)
    assert not unfixed.ok and unfixed.max_abs_diff > 2 * unfixed.tolerance


def test_the_multimodal_gemma3_is_not_loaded(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(ModelLoadError, match="the multimodal Gemma 3, 4B and up"):
        load_mlx(tmp_path)


def test_a_nested_partial_rotary_factor_reaches_mlx(
    tiny_model_factory: TinyModelFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers 5 writes Phi-4-mini's partial_rotary_factor (0.75) inside rope_parameters;
    mlx-lm's Phi-3 reads it top-level and would rotate every dimension (its default, 1.0)."""
    shutil.copytree(tiny_model_factory("phi3"), tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"]["partial_rotary_factor"] = 0.75  # rotary over 12 of 16 dims
    (tmp_path / "config.json").write_text(json.dumps(config))

    assert mlx_config_overrides(config)["partial_rotary_factor"] == 0.75
    assert check_logits(tmp_path).max_abs_diff < 2e-6
    monkeypatch.setattr(mlx_arch, "mlx_config_overrides", lambda config: {})
    assert not check_logits(tmp_path, raise_on_mismatch=False).ok
