"""What ft changes, per architecture, for mlx-lm to compute what transformers computes.

mlx-lm reads a Hugging Face folder itself, with its own model definitions. Where a definition
reads a config field transformers 5 writes elsewhere, or leaves out part of the computation,
ft fills in the config (`mlx_config_overrides`) or adapts the model class
(`mlx_model_classes`, given to mlx-lm's `load_model` as `get_model_classes`):

| model_type | what differs in mlx-lm 0.32 | what ft does |
| --- | --- | --- |
| any | `rope_theta`, `partial_rotary_factor` read top-level; transformers 5 nests them in `rope_parameters` | copies them up (Qwen2 falls back to 1e6 otherwise, Phi-2 to 0.4, Phi-3 to 1.0) |
| gpt2 | weights expected without transformers' `transformer.` prefix; `n_ctx` required | strips the prefix; fills `n_ctx` from `n_positions` |
| gpt2, gptj | `n_inner` ignored (MLP always 4 x width) | refuses other widths |
| gemma2 | no sliding window: every layer attends to the whole context | the sliding layers get a banded causal mask |
| gemma3_text | reads `sliding_window_pattern`, `rope_local_base_freq`; transformers 5 writes `layer_types` and `rope_parameters` per layer type | derives both |
| gemma3_text | scales the embeddings by sqrt(width) rounded to bfloat16 | in float32/float16 models, transformers' float32 scale |

`ft_models.convert.check_logits` proves the result on a model: the same ids through both, in
float32. torch and mlx are only imported inside the functions.
"""

from __future__ import annotations

import math
from typing import Any


class MLXConfigError(ValueError):
    """A config mlx-lm's definition would load wrongly; the message says what to do."""


def mlx_config_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """Config fields mlx-lm needs in another form than transformers writes them.

    Raises MLXConfigError for a config mlx-lm's definition would load wrongly (a GPT-2/GPT-J
    MLP of non-standard width; a Gemma 3 whose local and global layers do not follow the
    repeating pattern mlx-lm builds).
    """
    overrides: dict[str, Any] = {}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in config and "rope_theta" in rope:
        # transformers 5 nests rope_theta; mlx-lm reads it top-level and falls back to its own
        # default, which for Qwen2 is 1e6 instead of the usual 1e4.
        overrides["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
            overrides["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    nested_partial = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    if nested_partial is not None and config.get("partial_rotary_factor") is None:
        # Nested there too (Phi-2's 0.4, Phi-4-mini's 0.75); mlx-lm's defaults are 0.4 (phi)
        # and 1.0 (phi3).
        overrides["partial_rotary_factor"] = nested_partial
    model_type = config.get("model_type")
    if model_type in ("gpt2", "gptj"):
        width, inner = config.get("n_embd"), config.get("n_inner")
        if inner is not None and width is not None and inner != 4 * width:
            raise MLXConfigError(
                f"this {model_type} model has an MLP of n_inner={inner}, not 4 x n_embd="
                f"{4 * width}; mlx-lm's {model_type} only builds the standard width, so its "
                "weights would not fit. Set training.backend: torch."
            )
    if model_type == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        overrides["n_ctx"] = config["n_positions"]  # transformers 5 no longer writes n_ctx
    if model_type == "gemma3_text":
        overrides.update(_gemma3_overrides(config))
    return overrides


def _gemma3_overrides(config: dict[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    rope = config.get("rope_parameters") or {}
    # transformers 5: one rope per layer type; mlx-lm: rope_theta (global layers) and
    # rope_local_base_freq (sliding ones), with its own defaults 1e6 and 1e4.
    full, local = rope.get("full_attention"), rope.get("sliding_attention")
    if isinstance(full, dict) and "rope_theta" not in config:
        overrides["rope_theta"] = full["rope_theta"]
        if full.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
            overrides["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    if isinstance(local, dict) and "rope_local_base_freq" not in config:
        overrides["rope_local_base_freq"] = local["rope_theta"]
    types = config.get("layer_types")
    if types and "sliding_window_pattern" not in config:
        overrides["sliding_window_pattern"] = _gemma3_pattern(list(types))
    return overrides


def _gemma3_pattern(types: list[str]) -> int:
    """mlx-lm's `sliding_window_pattern` p for transformers' `layer_types`: mlx-lm makes layer i
    global exactly when i % p == p - 1, so the first global layer gives p and the rest must
    follow."""
    if "full_attention" not in types:
        raise MLXConfigError(
            "every layer of this Gemma 3 attends through its sliding window; mlx-lm's Gemma 3 "
            "needs a global (full_attention) layer. Set training.backend: torch."
        )
    period = types.index("full_attention") + 1
    expected = [
        "full_attention" if i % period == period - 1 else "sliding_attention"
        for i in range(len(types))
    ]
    if types != expected:
        raise MLXConfigError(
            f"this Gemma 3's layer_types {types} do not repeat one global layer every "
            f"{period}, the only layout mlx-lm's Gemma 3 builds. Set training.backend: torch."
        )
    return period


# Prefixes transformers writes that mlx-lm's sanitize() does not expect.
_STRIP_PREFIX = {"gpt2": "transformer."}


def mlx_model_classes(config: dict[str, Any]) -> tuple[type, type]:
    """(Model, ModelArgs) for mlx-lm's `load_model(get_model_classes=...)`: mlx-lm's own, or a
    subclass of its Model with ft's changes (see the module docstring)."""
    from mlx_lm.utils import _get_classes  # mlx-lm's own lookup, remapping included

    model_class, args_class = _get_classes(config)
    model_type = str(config.get("model_type"))
    if model_type in _STRIP_PREFIX:
        return _stripping_prefix(model_class, _STRIP_PREFIX[model_type]), args_class
    if model_type == "gemma2" and config.get("sliding_window"):
        return _gemma2_with_sliding_window(model_class, config), args_class
    if model_type == "gemma3_text":
        return _gemma3_with_exact_scale(model_class, int(config["hidden_size"])), args_class
    return model_class, args_class


def _stripping_prefix(model_class: type, prefix: str) -> type:
    class Model(model_class):  # type: ignore[misc, valid-type]
        def sanitize(self, weights: dict[str, Any]) -> dict[str, Any]:
            weights = {name.removeprefix(prefix): value for name, value in weights.items()}
            weights.pop("lm_head.weight", None)  # tied to the embeddings in mlx-lm's GPT-2
            return super().sanitize(weights)

    return Model


def gemma2_layer_types(config: dict[str, Any]) -> list[str]:
    """Which Gemma 2 layers are local: `layer_types`, else transformers' default (even layers
    slide, odd ones attend to everything)."""
    layers = int(config["num_hidden_layers"])
    return list(
        config.get("layer_types")
        or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
    )


def _gemma2_with_sliding_window(model_class: type, config: dict[str, Any]) -> type:
    import mlx.core as mx
    from mlx_lm.models.base import create_causal_mask
    from mlx_lm.models.gemma2 import TransformerBlock

    window = int(config["sliding_window"])
    sliding = [kind == "sliding_attention" for kind in gemma2_layer_types(config)]

    class SlidingBlock(TransformerBlock):  # type: ignore[misc, valid-type]
        """A Gemma 2 block whose queries see only the last `window` positions, as
        transformers' sliding layers do (query q sees key k when q - window < k <= q)."""

        def __call__(self, x: Any, mask: Any = None, cache: Any = None) -> Any:
            offset = int(getattr(cache, "offset", 0) or 0) if cache is not None else 0
            band = create_causal_mask(x.shape[1], offset, window_size=window)
            if mask is None or isinstance(mask, str):
                mask = band
            elif mask.dtype == mx.bool_:
                mask = mask & band
            else:  # an additive mask
                mask = mx.where(band, mask, mx.array(mx.finfo(mask.dtype).min, mask.dtype))
            return super().__call__(x, mask, cache)

    class Model(model_class):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any) -> None:
            super().__init__(args)
            # The same parameters under the same names: only the call changes.
            for layer, local in zip(self.model.layers, sliding, strict=True):
                if local:
                    layer.__class__ = SlidingBlock

    return Model


def _gemma3_with_exact_scale(model_class: type, hidden_size: int) -> type:
    import mlx.core as mx
    import mlx.nn as nn

    exact = math.sqrt(hidden_size)

    class ScaledEmbedding(nn.Embedding):
        """mlx-lm's Gemma 3 multiplies the embeddings by sqrt(width) rounded to bfloat16
        (34.0 for gemma-3-1b's 1,152, against 33.94); transformers by the float32 value cast
        to the weights' dtype. Corrected here, ahead of mlx-lm's multiplication, so both
        agree in every dtype (for bfloat16 weights the two are the same and nothing changes)."""

        def __call__(self, x: Any) -> Any:
            out = super().__call__(x)
            if out.dtype == mx.bfloat16:
                return out
            rounded = float(mx.array(exact, mx.bfloat16).astype(mx.float32).item())
            wanted = float(mx.array(exact, mx.float32).astype(out.dtype).item())
            return out * (wanted / rounded)

    class Model(model_class):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.model.embed_tokens.__class__ = ScaledEmbedding

    return Model
