"""PEFT adapters (ft_models.adapters): the converted adapter computes what peft computes.

peft is the reference: an adapter with random, non-zero A, B (init_lora_weights=False) and, for
DoRA, a magnitude moved away from its starting norms, gives logits on torch; the same adapter
converted to mlx-lm's layout and loaded by mlx-lm's own `load_adapters`, or merged into the MLX
weights for generation, must give the same logits on MLX.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ft_models.adapters import (
    AdapterError,
    adapted_modules,
    adapter_weights,
    lora_scale,
    mlx_lm_adapter,
    read_adapter_config,
    read_adapter_tensors,
    save_mlx_lm_adapter,
    to_mlx_lm,
    to_peft,
)
from ft_models.safetensors_io import write_tensors

TinyModelFactory = Callable[[str], Path]
IDS = [[1, 17, 42, 99, 311, 7, 250, 3, 64, 128, 500, 2]]
# float32 on both sides; torch and MLX agree on the tiny base models to about 1e-6
# (docs/architectures.md), and the adapters add about as much.
TOLERANCE = 1e-4
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gptj": ["q_proj", "v_proj", "fc_in"]}


@pytest.fixture(scope="module")
def base_model(
    tiny_model_factory: TinyModelFactory, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """`base_model(arch)`: the tiny model, but a GPT-J with mlx-lm's MLP width (4 x n_embd;
    the tiny one's is narrower, which mlx-lm cannot build): GPT-J is where transformers'
    `transformer.` is mlx-lm's `model.`."""
    wide: list[Path] = []

    def factory(arch: str) -> Path:
        if arch != "gptj":
            return tiny_model_factory(arch)
        if not wide:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM

            from ft_models.load import copy_tokenizer_files

            tiny = tiny_model_factory("gptj")
            folder = tmp_path_factory.mktemp("wide-gptj")
            config = AutoConfig.from_pretrained(tiny)
            config.n_inner = None
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(folder)
            copy_tokenizer_files(tiny, folder)
            wide.append(folder)
        return wide[0]

    return factory


def peft_adapter(base: Path, folder: Path, *, dora: bool, rslora: bool = False, **extra) -> object:
    """Save a peft adapter for `base` with random A, B (and magnitude) into `folder`; return
    the peft model (float32, eval mode)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS[model.config.model_type],
        init_lora_weights=False,
        use_dora=dora,
        use_rslora=rslora,
        **extra,
    )
    peft_model = get_peft_model(model, config).eval()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                # peft starts m at ||W + s B A||; move it, so that only a conversion that
                # carries m over (and not one that recomputes it) can match
                param.mul_(1 + 0.5 * torch.rand_like(param))
    peft_model.save_pretrained(folder, safe_serialization=True)
    return peft_model


def torch_logits(model: object) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()  # type: ignore[operator,union-attr]


def mlx_logits(model: object) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array(IDS)).astype(mx.float32))  # type: ignore[operator]


@pytest.mark.parametrize("arch", ["llama", "gptj"])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_the_converted_adapter_gives_peft_logits_on_mlx(
    base_model: Callable[[str], Path], tmp_path: Path, arch: str, method: str
) -> None:
    from mlx_lm.tuner.utils import load_adapters

    from ft_models.generation.mlx_backend import merge_adapter_mlx
    from ft_models.load import load_mlx

    base = base_model(arch)
    dora = method == "dora"
    reference = torch_logits(peft_adapter(base, tmp_path / "peft", dora=dora, rslora=not dora))

    out = save_mlx_lm_adapter(tmp_path / "peft", tmp_path / "mlx")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == method
    assert config["lora_parameters"]["scale"] == (8 / 4 if dora else 8 / math.sqrt(4))
    adapted, _ = load_mlx(base, dtype="float32")
    load_adapters(adapted, str(out))  # mlx-lm's own loader: LoRALinear / DoRALinear
    adapted.eval()
    converted = mlx_logits(adapted)
    print(f"{arch} {method}: |mlx-lm - peft| = {np.abs(converted - reference).max():.1e}")
    np.testing.assert_allclose(converted, reference, atol=TOLERANCE, rtol=0)

    merged, _ = load_mlx(base, dtype="float32")  # what generation does on MLX
    assert merge_adapter_mlx(merged, tmp_path / "peft") == 2 * len(TARGETS[arch])
    np.testing.assert_allclose(mlx_logits(merged), reference, atol=TOLERANCE, rtol=0)

    plain, _ = load_mlx(base, dtype="float32")  # and the adapter matters
    assert np.abs(mlx_logits(plain) - reference).max() > 100 * TOLERANCE


def test_mlx_lm_layout_names_shapes_and_config(
    tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    base = tiny_model_factory("gptj")  # read here, never loaded on MLX
    peft_adapter(base, tmp_path, dora=True, layers_to_transform=[1])
    tensors, config = mlx_lm_adapter(tmp_path)
    q = "model.h.1.attn.q_proj"  # transformers' `transformer.` is mlx-lm's `model.`
    assert sorted(tensors) == sorted(
        f"model.h.1.{m}.{leaf}"
        for m in ("attn.q_proj", "attn.v_proj", "mlp.fc_in")
        for leaf in ("lora_a", "lora_b", "m")
    )
    assert (tensors[f"{q}.lora_a"].shape, tensors[f"{q}.lora_b"].shape) == ((64, 4), (4, 64))
    assert tensors[f"{q}.m"].shape == (64,)
    # only the last block is adapted: mlx-lm counts adapted blocks from the last
    assert config == {
        "fine_tune_type": "dora",
        "num_layers": 1,
        "lora_parameters": {
            "rank": 4,
            "scale": 2.0,
            "dropout": 0.0,
            "keys": ["attn.q_proj", "attn.v_proj", "mlp.fc_in"],
        },
    }
    peft_names = read_adapter_tensors(tmp_path)
    back = to_peft(to_mlx_lm(peft_names, "gptj"), "gptj")
    assert sorted(back) == sorted(peft_names)
    assert all(np.array_equal(back[k], peft_names[k]) for k in back)


def test_the_scale_is_peft_s_for_every_module(
    tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    # peft's own `scaling` of each adapted layer, with rsLoRA and per-module patterns
    model = peft_adapter(
        tiny_model_factory("llama"),
        tmp_path,
        dora=False,
        rslora=True,
        rank_pattern={"v_proj": 2},
        alpha_pattern={"down_proj": 32},
    )
    config = read_adapter_config(tmp_path)
    scales = {
        name.removeprefix("base_model.model."): module.scaling["default"]
        for name, module in model.named_modules()  # type: ignore[attr-defined]
        if isinstance(getattr(module, "scaling", None), dict)  # attention has a float one
    }
    assert len(scales) == 6
    for module, scale in scales.items():
        assert config.scale_of(module) == pytest.approx(scale, rel=1e-12), module
    assert not config.uniform
    assert lora_scale(16, 32) == 2.0 and lora_scale(16, 32, rslora=True) == 8.0
    with pytest.raises(AdapterError, match="one rank and scale for every layer"):
        mlx_lm_adapter(tmp_path)


def test_adapter_folder_errors(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    with pytest.raises(AdapterError, match="no such folder"):
        read_adapter_config(tmp_path / "missing")
    with pytest.raises(AdapterError, match="it is a full model"):
        read_adapter_config(tiny_model_factory("llama"))
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    assert read_adapter_config(tmp_path).peft_type == "PREFIX_TUNING"
    (tmp_path / "adapter_model.bin").write_bytes(b"junk")
    with pytest.raises(AdapterError, match=r"only adapter_model.bin, a pickle"):
        adapter_weights(tmp_path)
    with pytest.raises(AdapterError, match="holds LoRA and DoRA adapters, and this one is PREFIX"):
        mlx_lm_adapter(tmp_path)


def test_tensors_that_are_not_lora_are_named(tmp_path: Path) -> None:
    a = np.zeros((4, 8), np.float32)
    b = np.zeros((8, 4), np.float32)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    saved = {
        f"{key}.lora_A.weight": a,
        f"{key}.lora_B.weight": b,
        "base_model.model.lm_head.modules_to_save.weight": np.zeros((8, 8), np.float32),
    }
    assert list(adapted_modules(saved, tmp_path, strict=False)) == [
        "model.layers.0.self_attn.q_proj"
    ]
    with pytest.raises(AdapterError, match=r"lm_head\.modules_to_save\.weight is not a LoRA"):
        to_mlx_lm(saved, "llama", tmp_path)
    del saved[f"{key}.lora_B.weight"]
    with pytest.raises(AdapterError, match="q_proj lacks its lora_A or lora_B"):
        adapted_modules(saved, tmp_path, strict=False)
    write_tensors(tmp_path / "adapter_model.safetensors", {f"{key}.lora_A.weight": a})
    assert list(read_adapter_tensors(tmp_path)) == [f"{key}.lora_A.weight"]
