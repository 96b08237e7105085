"""torch -> MLX: load a Hugging Face folder with mlx-lm, or write an MLX folder, and prove the
result computes what the torch model computes.

mlx-lm reads Hugging Face safetensors itself (its `sanitize()` renames and transposes what
differs), so "conversion" is mostly that reading plus the config fixes in
`ft_models.load.mlx_config_overrides`. What can go wrong is silent: a weight read under the
wrong name, a transpose missed, a config field falling back to a different default (Qwen2's
rope_theta did). So the check runs the same token ids through both models, in float32, and
compares the logits; a difference above the tolerance is a ConversionError, never a warning.

Measured in float32: the tiny random models of the tests (2 layers, width 64, logits below
1.5) differ by at most 5.4e-7; SmolLM2-135M (30 layers, logits up to 36) by 1.9e-4. Errors
are far larger: SmolLM2 read with mlx-lm's default rope_theta differs by 7.5. The default
tolerance scales with the logits, `RELATIVE_TOLERANCE` x max(1, largest |logit|): 1e-4 for
the tiny models, 3.6e-3 for SmolLM2 (docs/architectures.md).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs

from ft_models.device import MLX_MISSING
from ft_models.load import (
    copy_tokenizer_files,
    load_mlx,
    load_torch,
    mlx_config_overrides,
    read_config,
)

RELATIVE_TOLERANCE = 1e-4
"""The default tolerance, per unit of the largest torch logit (and at least this, absolute)."""

CHECK_LENGTH = 32
"""Tokens in the default check input."""


class ConversionError(RuntimeError):
    """The MLX model does not compute what the torch model computes."""


@attrs.frozen
class LogitCheck:
    """How far the MLX logits are from torch's on the same input, in float32."""

    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    ok: bool
    max_abs_logit: float
    """The largest torch logit, for scale."""
    tokens: int


def check_input_ids(vocab_size: int, length: int = CHECK_LENGTH) -> list[int]:
    """A fixed, spread-out sequence of token ids below `vocab_size` (the same every call)."""
    # A multiplicative walk visits ids across the whole vocabulary, rare ones included.
    return [(7 + 7919 * i) % vocab_size for i in range(length)]


def check_logits(
    folder: Path,
    *,
    tolerance: float | None = None,
    mlx_model: Any = None,
    mlx_folder: Path | None = None,
    input_ids: list[int] | None = None,
    raise_on_mismatch: bool = True,
) -> LogitCheck:
    """Run the same token ids through the torch model of `folder` and an MLX model, in
    float32, and compare the logits.

    The MLX model is `mlx_model` when given (it is cast to float32), else the one in
    `mlx_folder` (an MLX folder written by `convert_to_mlx`), else `folder` loaded with
    mlx-lm. `tolerance` is absolute; None means `RELATIVE_TOLERANCE` x max(1, largest
    |logit|). Raises ConversionError when the largest absolute difference is above it (unless
    `raise_on_mismatch` is False: then `ok` says it).
    """
    folder = Path(folder)
    ids = input_ids or check_input_ids(int(read_config(folder)["vocab_size"]))
    torch_logits = _torch_logits(folder, ids)
    mlx_logits = _mlx_logits(mlx_model, mlx_folder or folder, ids)
    return _compare(torch_logits, mlx_logits, tolerance, folder, raise_on_mismatch)


def _torch_logits(folder: Path, ids: list[int]) -> Any:
    import torch

    model, _ = load_torch(folder, dtype="float32", device="cpu")
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.numpy()


def _mlx_logits(model: Any, folder: Path, ids: list[int]) -> Any:
    import numpy as np

    try:
        import mlx.core as mx
    except ImportError as error:
        raise ImportError(MLX_MISSING) from error
    if model is None:
        model, _ = load_mlx(folder, dtype="float32")
    else:
        model.set_dtype(mx.float32)
    return np.array(model(mx.array([ids])), dtype=np.float32)


def _compare(
    expected: Any, actual: Any, tolerance: float | None, folder: Path, raise_on_mismatch: bool
) -> LogitCheck:
    import numpy as np

    if expected.shape != actual.shape:
        raise ConversionError(
            f"MLX logits have shape {actual.shape}, torch's {expected.shape}, for {folder}"
        )
    diff = np.abs(expected - actual)
    max_diff = float(diff.max())
    largest = float(np.abs(expected).max())
    if tolerance is None:
        tolerance = RELATIVE_TOLERANCE * max(1.0, largest)
    check = LogitCheck(
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()),
        tolerance=tolerance,
        # NaN compares False, so a model that produces NaN fails too.
        ok=bool(max_diff <= tolerance),
        max_abs_logit=largest,
        tokens=int(expected.shape[1]),
    )
    if not check.ok and raise_on_mismatch:
        raise ConversionError(
            f"the MLX model of {folder} does not match torch: logits differ by up to "
            f"{check.max_abs_diff:.3g} (mean {check.mean_abs_diff:.3g}; largest logit "
            f"{check.max_abs_logit:.3g}) over {check.tokens} tokens, above the tolerance "
            f"{tolerance:.3g}. A weight was read wrongly, or a config field means something "
            "else to mlx-lm; train this model with training.backend: torch."
        )
    return check


def convert_to_mlx(
    folder: Path,
    output: Path,
    *,
    dtype: str | None = None,
    tolerance: float | None = None,
) -> LogitCheck:
    """Write an MLX folder (mlx-lm's layout: sanitized safetensors, config, tokenizer) for the
    Hugging Face folder `folder` at `output`, after checking its float32 logits against torch.

    `dtype` (float32, bfloat16, float16) is the dtype written; None keeps the saved one. The
    folder is complete or absent: it is written next to `output` and renamed into place only
    after the check passed. Raises ConversionError on a mismatch, FileExistsError when
    `output` exists.
    """
    from mlx_lm.utils import save_config, save_model

    folder, output = Path(folder), Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists: choose a new folder for the MLX model")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model, _ = load_mlx(folder, dtype="auto")
        save_model(staging, model)
        config = {**read_config(folder), **mlx_config_overrides(read_config(folder))}
        save_config(config, staging / "config.json")
        copy_tokenizer_files(folder, staging)
        check = check_logits(folder, mlx_folder=staging, tolerance=tolerance)
        if dtype is not None:
            # Checked in float32 above; the cast is the only change from here on.
            model, _ = load_mlx(staging, dtype=dtype)
            for old in staging.glob("model*.safetensors*"):
                old.unlink()
            save_model(staging, model)
            config["dtype" if "dtype" in config else "torch_dtype"] = dtype
            save_config(config, staging / "config.json")
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return check
