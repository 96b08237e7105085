import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ft_models.convert import ConversionError, LogitCheck, check_logits, convert_to_mlx
from ft_models.load import load_mlx

TinyModelFactory = Callable[[str], Path]


def test_mlx_computes_what_torch_computes(tiny_model_factory: TinyModelFactory) -> None:
    """tests/test_architectures.py runs the check on every architecture's tiny model."""
    check = check_logits(tiny_model_factory("llama"))

    assert isinstance(check, LogitCheck)
    assert check.ok
    assert check.tokens == 32
    # float32 on both sides: the difference is rounding, far below the tolerance.
    assert check.max_abs_diff < 2e-6
    assert check.tolerance == 1e-4 * max(1.0, check.max_abs_logit)


def test_a_perturbed_weight_is_caught(tiny_model_factory: TinyModelFactory) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    folder = tiny_model_factory("llama")
    model, _ = load_mlx(folder, dtype="float32")
    name = "model.layers.1.mlp.down_proj.weight"
    weight = dict(tree_flatten(model.parameters()))[name]
    model.update(tree_unflatten([(name, weight + 0.01 * mx.ones_like(weight))]))

    with pytest.raises(
        ConversionError, match="does not match torch: logits differ by up to"
    ) as error:
        check_logits(folder, mlx_model=model)

    assert "train this model with training.backend: torch" in str(error.value)
    check = check_logits(folder, mlx_model=model, raise_on_mismatch=False)
    assert not check.ok
    assert check.max_abs_diff > 10 * check.tolerance


def test_a_config_field_mlx_reads_differently_is_caught(
    tiny_model_factory: TinyModelFactory,
) -> None:
    """mlx-lm alone reads Qwen2's rope_theta from the wrong place (transformers 5 nests it);
    the check catches the model that ft's loader would not have built."""
    from mlx_lm.utils import load_model

    folder = tiny_model_factory("qwen2")
    unfixed, _ = load_model(folder)

    with pytest.raises(ConversionError):
        check_logits(folder, mlx_model=unfixed)


def test_convert_writes_an_mlx_folder_that_passes(
    tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    source = tiny_model_factory("qwen2")
    output = tmp_path / "qwen2-mlx"

    check = convert_to_mlx(source, output, dtype="bfloat16")
    model, tokenizer = load_mlx(output)
    config = json.loads((output / "config.json").read_text())

    assert check.ok
    assert config["rope_theta"] == 10000.0
    assert config["dtype"] == "bfloat16"
    assert str(model.model.embed_tokens.weight.dtype) == "mlx.core.bfloat16"
    assert (output / "tokenizer.json").is_file()
    assert len(tokenizer.encode("The capital of France is Paris.")) > 3
    assert [p.name for p in tmp_path.iterdir()] == ["qwen2-mlx"]  # no staging folder left


def test_a_corrupted_mlx_folder_is_caught(
    tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    import mlx.core as mx

    source = tiny_model_factory("llama")
    output = tmp_path / "llama-mlx"
    convert_to_mlx(source, output)
    weights = mx.load(str(output / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    weights[name] = weights[name] * 1.5
    mx.save_safetensors(str(output / "model.safetensors"), weights)

    with pytest.raises(ConversionError):
        check_logits(source, mlx_folder=output)


def test_a_failed_conversion_leaves_nothing(
    tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    source = tiny_model_factory("llama")

    with pytest.raises(ConversionError):
        convert_to_mlx(source, tmp_path / "out", tolerance=0.0)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="choose a new folder"):
        convert_to_mlx(source, tmp_path / "taken")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_logits_of_another_shape_are_an_error(tiny_model_factory: TinyModelFactory) -> None:
    import mlx.core as mx

    class WrongVocabulary:
        def set_dtype(self, dtype: object) -> None:
            pass

        def __call__(self, ids: mx.array) -> mx.array:
            return mx.zeros((1, ids.shape[1], 7))

    with pytest.raises(
        ConversionError, match=r"MLX logits have shape \(1, 32, 7\), torch's \(1, 32, 512\)"
    ):
        check_logits(tiny_model_factory("llama"), mlx_model=WrongVocabulary())
