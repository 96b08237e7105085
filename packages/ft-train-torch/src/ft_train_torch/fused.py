"""Faster forms of what peft computes, for training: the same results, less work per step.

`fuse_lora(model)`: peft's LoRA `Linear` computes `result + lora_B(lora_A(dropout(x))) * scaling`,
three passes over the layer's `(tokens, out_features)` output in the forward pass (the product,
the scaling, the sum) and one more in the backward pass (the scaling's gradient). With dropout
0 (peft's `Identity`) the same is one `addmm`: `result + scaling * (lora_A(x) @ lora_B.T)`, the
scaling folded into the matrix product. Only plain LoRA layers with one active adapter, no
dropout and no LoRA bias take it, and only while the adapter is on and unmerged; anything else
(DoRA and other variants, `disable_adapter()`, mixed adapter batches) goes through peft's own
forward. The layers stay peft's (a subclass): saving, loading and merging are unchanged.

`frozen_linears_to(model, dtype)`: under autocast every frozen `Linear` weight is cast to the
autocast dtype at every forward pass (autocast caches casts only of weights that take a
gradient), a copy of the whole base model each step: 13% of a bf16 LoRA step on a CPU. Stored in
that dtype once, the cast is a no-op, the matrix products see the same values (a float32 weight
rounded to bf16 once or every step is the same bf16 weight), and the base takes half the memory.
"""

from __future__ import annotations

from typing import Any

import torch


def fuse_lora(model: torch.nn.Module) -> int:
    """Switch every peft LoRA `Linear` in `model` to the fused forward; how many were."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:  # no peft: nothing to fuse
        return 0
    fused = _fused_class(Linear)
    count = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = fused
            count += 1
    return count


def frozen_linears_to(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen float32 `torch.nn.Linear` of `model` (weight and bias) in `dtype`;
    how many were. Only for a model whose forward passes all run under autocast to `dtype`:
    outside it a float32 input would meet a `dtype` weight. A weight shared with the input
    embeddings (tied output layers) is left alone: the embedding lookup is not autocast, and
    the residual stream it starts stays float32."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = {id(embeddings.weight)} if embeddings is not None else set()
    count = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        parameters = [p for p in (module.weight, module.bias) if p is not None]
        if any(p.requires_grad or p.dtype != torch.float32 for p in parameters):
            continue
        if id(module.weight) in tied:
            continue
        for parameter in parameters:
            parameter.data = parameter.data.to(dtype)
        count += 1
    return count


_CLASSES: dict[type, type] = {}


def _fused_class(linear: type) -> type:
    if linear not in _CLASSES:

        class FusedLoraLinear(linear):  # type: ignore[misc, valid-type]
            """peft's LoRA `Linear` with the plain adapter's forward as one `addmm`."""

            def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
                name = _plain_adapter(self, args, kwargs)
                if name is None:
                    return super().forward(x, *args, **kwargs)
                result = self.base_layer(x)
                lora_a, lora_b = self.lora_A[name], self.lora_B[name]
                down = lora_a(self._cast_input_dtype(x, lora_a.weight.dtype))
                if down.dtype != result.dtype and not torch.is_autocast_enabled(x.device.type):
                    # A base in another dtype than the adapter (bf16 base, fp32 adapter):
                    # peft's own sum, which promotes.
                    return (result + lora_b(down) * self.scaling[name]).to(result.dtype)
                flat = torch.addmm(
                    result.reshape(-1, result.shape[-1]),
                    down.reshape(-1, down.shape[-1]),
                    lora_b.weight.t(),
                    alpha=self.scaling[name],
                )
                return flat.view(result.shape).to(result.dtype)

        FusedLoraLinear.__name__ = linear.__name__  # repr and peft's checks read the same
        FusedLoraLinear.__qualname__ = linear.__qualname__
        _CLASSES[linear] = FusedLoraLinear
    return _CLASSES[linear]


def _plain_adapter(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The one active plain-LoRA adapter of `layer` that the fused forward computes exactly as
    peft would, or None (peft's own forward then)."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in layer.lora_A or name in layer.lora_variant:
        return None
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    if layer.lora_B[name].bias is not None:
        return None
    return name
