"""MLX exports: an mlx-lm model folder (optionally 4/8-bit) and mlx-lm's adapter layout.

The model is built with mlx-lm's own definitions through `ft_models.load.load_mlx` (which
fixes the few config fields transformers 5 writes differently), quantized with mlx-lm's
`quantize_model` and written with mlx-lm's `save`, so the folder loads with plain
`mlx_lm.load(folder)`. The adapter layout is `ft_models.adapters.save_mlx_lm_adapter`, the one
conversion the MLX trainer uses too. mlx and mlx-lm are imported inside the functions (the `mlx`
extra).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ft_export.building import (
    build_export,
    expected_template,
    merge_for_check,
    require_adapter,
    save_adapter,
)
from ft_export.types import (
    ExportError,
    ExportOptions,
    ExportResult,
    ExportSource,
    Progress,
    Verification,
)

MLX_MISSING = 'the mlx formats need mlx and mlx-lm: pip install "ft-export[mlx]"'


def _import_mlx() -> tuple[Any, Any]:
    try:
        import mlx.core as mx
        import mlx_lm
    except ImportError as error:
        raise ImportError(MLX_MISSING) from error
    return mx, mlx_lm


def _bits(options: ExportOptions) -> int | None:
    if options.quant in (None, "", "none"):
        return None
    text = str(options.quant).lower().removeprefix("q").removesuffix("bit")
    if text not in ("4", "8"):
        raise ExportError(f"--quant for mlx is 4 or 8 (bits), not {options.quant!r}")
    return int(text)


def _mlx_logits(model: Any, ids: list[int]) -> np.ndarray:
    mx, _ = _import_mlx()
    logits = model(mx.array([ids]))[0].astype(mx.float32)
    return np.array(logits)


def _quiet() -> contextlib.AbstractContextManager[Any]:
    return contextlib.redirect_stdout(io.StringIO())  # mlx-lm prints [INFO] lines


def _load_mlx(folder: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a Hugging Face folder with mlx-lm's definitions: through ft-models
    (which fixes transformers 5 configs and GPT-2's names), or for an architecture ft-models
    does not load (none of docs/architectures.md's), mlx-lm's loader with the same config
    fixes."""
    from ft_models.load import ModelLoadError, load_mlx, mlx_config_overrides, read_config

    try:
        return load_mlx(folder)
    except ModelLoadError as error:
        if "is not one ft loads" not in str(error):
            raise
    from mlx_lm.utils import load_model, load_tokenizer

    config = read_config(folder)
    try:
        model, _ = load_model(folder, model_config=mlx_config_overrides(config))
    except ValueError as error:
        raise ModelLoadError(f"mlx-lm cannot load {folder}: {error}") from error
    model.eval()
    return model, load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))


class MLXExporter:
    name = "mlx"
    description = "the merged model as an mlx-lm folder (loads with mlx_lm.load), 4/8-bit optional"

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        from ft_export.merge import saved_dtype

        bits = _bits(options)
        dtype = options.dtype or saved_dtype(source.base)
        _import_mlx()

        def write(build: Path) -> tuple[Verification | None, list[str]]:
            from mlx_lm.utils import quantize_model, save

            from ft_export.merge import save_hf
            from ft_models.load import ModelLoadError, mlx_config_overrides

            merged = merge_for_check(source, options, progress)
            with tempfile.TemporaryDirectory(dir=build.parent) as tmp:
                save_hf(merged.model, merged.tokenizer, Path(tmp), dtype, "50GB")
                config = json.loads((Path(tmp) / "config.json").read_text(encoding="utf-8"))
                try:
                    config.update(mlx_config_overrides(config))
                    model, tokenizer = _load_mlx(Path(tmp))
                except ModelLoadError as error:
                    raise ExportError(f"mlx-lm cannot hold this model: {error}") from None
                config.pop("dtype", None)
                config["torch_dtype"] = dtype
                progress("writing the mlx model", 0, 1)
                with _quiet():
                    if bits is not None:
                        model, config = quantize_model(model, config, 64, bits)
                    save(build, tmp, model, tokenizer, config)
            progress("writing the mlx model", 1, 1)
            if not options.verify:
                return None, merged.notes
            return _check_mlx(source, build, merged, dtype, bits), merged.notes

        return build_export(out, self.name, write)


def _check_mlx(
    source: ExportSource, folder: Path, merged: Any, dtype: str, bits: int | None
) -> Verification:
    from ft_export.verify import TOLERANCES, compare

    _, mlx_lm = _import_mlx()
    with _quiet():
        model, tokenizer = mlx_lm.load(str(folder))
    key = f"mlx-{bits}" if bits else ("mlx-float32" if dtype == "float32" else dtype)
    tolerance = TOLERANCES.get(key, 1e-4)
    checks = {
        "chat template kept": tokenizer.chat_template == expected_template(source, merged.tokenizer)
    }
    return compare(
        merged.reference,
        _mlx_logits(model, merged.reference.ids),
        "mlx_lm.load",
        tolerance,
        checks=checks,
    )


class MLXAdapterExporter:
    name = "mlx-adapter"
    description = (
        "the LoRA/DoRA adapter in mlx-lm's layout (adapters.safetensors + adapter_config.json)"
    )

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        from ft_models.adapters import AdapterError, save_mlx_lm_adapter

        require_adapter(source, self.name)
        _import_mlx()
        base_config = json.loads((source.base / "config.json").read_text(encoding="utf-8"))
        if base_config.get("model_type") in ("gpt2", "gptj"):
            width, inner = base_config.get("n_embd"), base_config.get("n_inner")
            if inner is not None and inner != 4 * width:
                raise ExportError(
                    f"mlx-lm's {base_config['model_type']} only builds an MLP of 4 x n_embd, "
                    f"and this model has n_inner={inner}"
                )

        def write(build: Path) -> tuple[Verification | None, list[str]]:
            with tempfile.TemporaryDirectory(dir=build.parent) as tmp:
                notes = save_adapter(source, Path(tmp))
                try:
                    save_mlx_lm_adapter(Path(tmp), build, base_config=base_config)
                except AdapterError as error:
                    raise ExportError(f"{error}: export --format mlx (the merged model)") from None
            progress("adapter written", 1, 1)
            if not options.verify:
                return None, notes
            merged = merge_for_check(source, options, progress)
            return _check_mlx_adapter(source, build, merged), notes + merged.notes

        return build_export(out, self.name, write)


def _check_mlx_adapter(source: ExportSource, folder: Path, merged: Any) -> Verification:
    from mlx_lm.tuner.utils import load_adapters

    from ft_export.verify import TOLERANCES, compare

    # mlx-lm's own loader for the adapter; the base through ft's (transformers 5 config fixes)
    model, _ = _load_mlx(source.base)
    with _quiet():
        model = load_adapters(model, str(folder))
    model.eval()
    return compare(
        merged.reference,
        _mlx_logits(model, merged.reference.ids),
        "mlx-lm load_adapters on the base",
        TOLERANCES.get("mlx-float32", 1e-4),
    )
