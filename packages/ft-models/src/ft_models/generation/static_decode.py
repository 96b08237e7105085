"""A lean decode loop for Llama-shaped transformers models on torch: a static KV cache and the
layers' own weights run directly, without transformers' per-step machinery.

Decoding one token of a small model on a CPU is a few hundred tiny operations: in
transformers' `forward`, a `DynamicCache` grows by `torch.cat` every layer and step, the causal
mask and the rotary angles are rebuilt every step, and each module goes through its hooks. Here
the cache is allocated once (and doubled when full), the rotary tables are computed once for
every position with the model's own rotary module (so Llama 3 and YaRN scaling come for free),
RMSNorm is torch's fused `rms_norm`, and a single query's grouped heads are attended as one
small batch (the query heads that share a key/value head are rows of one SDPA call), so the
key/value heads are never repeated. The arithmetic is the layers' own: the same weights, in
the same order, and the logits equal transformers' to rounding (tests/test_static_decode.py).

Used for the architectures whose layers are exactly this shape (`StaticDecoder.for_model`
says which, and why not): Llama, Mistral and Qwen2 without sliding windows, Qwen3 (its
per-head q/k norms), and their fine-tunes with merged adapters. Anything else, and a model
with unmerged adapters, is run by transformers as before.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}
"""transformers `model_type`s whose decoder layers this loop runs."""

STATIC_ROPE = {"default", "linear", "llama3", "yarn"}
"""Rotary types whose angles depend on the position only (dynamic NTK and LongRoPE change
with the sequence length, so transformers recomputes them)."""


def unsupported_reason(model: Any) -> str | None:
    """Why `model` cannot run in the static loop, or None when it can."""
    import torch

    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return f"model_type {kind!r} is not one of {sorted(SUPPORTED)}"
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if any(t != "full_attention" for t in layer_types):
            return "it has sliding-window layers"
    elif getattr(config, "sliding_window", None) is not None:
        return "it has a sliding window"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"its rotary embedding ({rope}) changes with the sequence length"
    inner = getattr(model, "model", None)
    if type(getattr(model, "lm_head", None)) is not torch.nn.Linear or inner is None:
        return "it has no plain lm_head"
    if not hasattr(inner, "rotary_emb") or not hasattr(inner, "layers"):
        return "it has no shared rotary embedding"
    for layer in inner.layers:
        attention, mlp = layer.self_attn, layer.mlp
        linears = [getattr(attention, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not torch.nn.Linear for m in linears):
            return "its projections are not plain Linear layers (an unmerged adapter?)"
        if type(getattr(mlp, "act_fn", None)).__name__ not in ("SiLU", "SiLUActivation"):
            return "its MLP activation is not SiLU"
    return None


class StaticDecoder:
    """One sequence decoded against a static KV cache: `start(prompt)`, then `step(token)`,
    each giving the next token's logits (float32, vocabulary).

    `compile` runs `step` compiled (`compiled_decode.CompiledStep`) on a CPU, where a C++
    compiler is found: True builds each capacity's step when first needed (or loads it, built
    by an earlier process), "cached" only loads what is built, "background" builds in a
    background thread while steps run eagerly; the prompt is read eagerly either way. `warm()`
    starts building in the background."""

    def __init__(self, model: Any, compile: bool | str = False) -> None:
        import torch

        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the static decode loop cannot run this model: {reason}")
        self.torch = torch
        self.model = model
        config = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.lm_head = model.lm_head
        first = inner.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.scaling = float(first.scaling)
        self.layers = []
        for layer in inner.layers[: config.num_hidden_layers]:
            attention, mlp = layer.self_attn, layer.mlp
            q_norm = getattr(attention, "q_norm", None)
            k_norm = getattr(attention, "k_norm", None)
            self.layers.append(
                _Layer(
                    norm_in=(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                    qkv=_fuse([attention.q_proj, attention.k_proj, attention.v_proj]),
                    o_proj=attention.o_proj,
                    q_norm=None if q_norm is None else (q_norm.weight, q_norm.variance_epsilon),
                    k_norm=None if k_norm is None else (k_norm.weight, k_norm.variance_epsilon),
                    norm_post=(
                        layer.post_attention_layernorm.weight,
                        layer.post_attention_layernorm.variance_epsilon,
                    ),
                    gate_up=_fuse([mlp.gate_proj, mlp.up_proj]),
                    intermediate=int(mlp.gate_proj.weight.shape[0]),
                    down=mlp.down_proj,
                )
            )
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.caches: list[Any] = []
        """Per layer: (1, 2 x key/value heads, capacity, head dim), keys then values."""
        self.keys: list[Any] = []
        self.values: list[Any] = []
        """Views of `caches`: each layer's keys and values."""
        self.cos: Any = None
        self.sin: Any = None
        self.length = 0
        self.compiled: Any = None
        """The compiled step (`CompiledStep`), when asked for and possible."""
        self.compile_reason: str | None = None
        """Why `step` is not compiled (None: it is, or it was not asked for)."""
        if compile:
            self.compiled = self._compiled_step("foreground" if compile is True else compile)

    def _compiled_step(self, build: str) -> Any:
        from ft_models.generation.compiled_decode import CompiledStep, compile_unavailable

        torch = self.torch
        if self.lm_head.weight.device.type != "cpu":
            self.compile_reason = "the compiled step is for the CPU"
        elif type(self.embed) is not torch.nn.Embedding:
            self.compile_reason = "its embedding is not a plain Embedding"
        elif build != "cached":  # loading a package built before needs no compiler
            self.compile_reason = compile_unavailable()
        return CompiledStep(self, build) if self.compile_reason is None else None

    def compile_failed(self, error: BaseException) -> None:
        """Turn the compiled step off after `error` (the eager step serves from now on)."""
        import warnings

        self.compiled = None
        self.compile_reason = f"compiling failed: {type(error).__name__}: {error}"
        warnings.warn(f"ft: decoding without the compiled step ({self.compile_reason})",
                      stacklevel=2)  # fmt: skip

    def warm(self, lengths: tuple[int, ...] = (256, 512)) -> None:
        """Have the step for caches of `lengths` positions loaded or built in a background
        thread, one after the other (no-op without a compiled step; only loaded where built
        before when `compile="cached"`); from now on a later capacity is built in the
        background too when a step first needs it."""
        from ft_models.generation.compiled_decode import warm_in_background

        compiled = self.compiled
        if compiled is None:
            return
        capacities = tuple(dict.fromkeys(self._capacity_for(n) for n in lengths))
        if compiled.build == "cached":
            for capacity in capacities:
                compiled.ready(capacity)
            return
        compiled.build = "background"
        warm_in_background(compiled, capacities)

    def build(self, length: int, say: Any = None) -> list[int]:
        """Have the compiled step loaded, or built now, for every cache capacity a sequence
        of up to `length` positions passes through (no-op without a compiled step); `say`
        (a callable) hears of each build before it starts. The capacities built here."""
        compiled = self.compiled
        built: list[int] = []
        if compiled is None:
            return built
        capacity = self._capacity_for(1)
        while True:
            if capacity not in compiled.runners and not compiled.path(capacity).is_file():
                if say is not None:
                    say(capacity)
                compiled.warm(capacity)
                built.append(capacity)
            if capacity >= self._capacity_for(length):
                return built
            capacity = self._capacity_for(capacity + 1)

    def fork(self) -> StaticDecoder:
        """Another decoder of the same layers (the same weights, no copy) with a cache of its
        own."""
        other = copy.copy(self)
        other.caches, other.keys, other.values, other.length = [], [], [], 0
        return other

    # -- the cache ---------------------------------------------------------------------------

    def _reserve(self, length: int) -> None:
        """Room for `length` positions: the cache and the rotary tables, doubled when full."""
        torch = self.torch
        capacity = self.caches[0].shape[2] if self.caches else 0
        if length <= capacity:
            return
        size = self._capacity_for(length)
        weight = self.lm_head.weight
        shape = (1, 2 * self.kv_heads, size, self.head_dim)
        # Zeroed: the compiled step attends over the whole capacity, masked, and a masked
        # position must be finite to count for nothing.
        caches = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in self.layers]
        if self.caches and self.length:
            for old, new in zip(self.caches, caches, strict=True):
                new[:, :, : self.length] = old[:, :, : self.length]
        kv = self.kv_heads
        self.caches = caches
        self.keys = [c[:, :kv] for c in caches]
        self.values = [c[:, kv:] for c in caches]
        self.rotary_tables(size)

    def _capacity_for(self, length: int) -> int:
        size = max(256, 1 << (length - 1).bit_length())
        if self.max_positions is not None:
            size = max(length, min(size, self.max_positions))
        return size

    def rotary_tables(self, size: int) -> None:
        """`cos`/`sin` (positions, head dim) for at least `size` positions, from the model's own
        rotary module (so its scaling applies)."""
        if self.cos is not None and self.cos.shape[0] >= size:
            return
        weight = self.lm_head.weight
        positions = self.torch.arange(size, device=weight.device)[None]
        probe = self.torch.empty((1, 1, self.head_dim), dtype=weight.dtype, device=weight.device)
        cos, sin = self.rotary(probe, position_ids=positions)
        self.cos, self.sin = cos[0], sin[0]

    # -- decoding ----------------------------------------------------------------------------

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Read the prompt into an empty cache; the logits of the token after it."""
        self.length = 0
        return self._forward(list(prompt_ids))

    def step(self, token: int) -> np.ndarray:
        """Feed one token; the logits of the token after it."""
        self._reserve(self.length + 1)
        logits = self.compiled_step(int(token), self.length, [c[0] for c in self.caches])
        if logits is None:
            return self._forward([int(token)])
        self.length += 1
        return logits

    def compiled_step(self, token: int, position: int, caches: list[Any]) -> np.ndarray | None:
        """The logits after `token` at `position` from the compiled step, its keys and values
        written into `caches` (per layer: 2 x key/value heads, capacity, head dim); None when
        the step should run eagerly (no compiled step, none built for this capacity yet, or a
        build that just failed: the step is then off for good)."""
        compiled = self.compiled
        if compiled is None:
            return None
        try:
            if not compiled.ready(caches[0].shape[1]):
                return None
        except Exception as error:  # building or loading failed: decode eagerly from now on
            self.compile_failed(error)
            return None
        return compiled(token, position, caches, self.cos, self.sin)

    def extend(self, ids: Sequence[int]) -> np.ndarray:
        """Feed several tokens after what the cache holds (a chat's next turn); the logits of
        the token after them."""
        return self._forward([int(i) for i in ids])

    def _forward(self, ids: list[int]) -> np.ndarray:
        torch = self.torch
        functional = torch.nn.functional
        n, start = len(ids), self.length
        self._reserve(start + n)
        end = start + n
        linear, rms = functional.linear, _rms_norm
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        with torch.inference_mode():
            device = self.lm_head.weight.device
            x = self.embed(torch.tensor([ids], dtype=torch.long, device=device))
            cos = self.cos[start:end][None, None]  # (1, 1, n, head_dim)
            sin = self.sin[start:end][None, None]
            q_size, kv_size = heads * dim, kv_heads * dim
            for index, layer in enumerate(self.layers):
                h = rms(x, layer.norm_in)
                y = linear(h, *layer.qkv)  # q, k and v side by side
                v = y[..., q_size + kv_size :]
                if n == 1 and layer.q_norm is None:
                    # One token: the heads are the rows; q and k turn in one rotation.
                    qk = y[..., : q_size + kv_size].view(1, heads + kv_heads, 1, dim)
                    qk = torch.addcmul(qk * cos, rotate_half(qk), sin)
                    q, k = qk[:, :heads], qk[:, heads:]
                    v = v.view(1, kv_heads, 1, dim)
                else:
                    q = y[..., :q_size].view(1, n, heads, dim)
                    k = y[..., q_size : q_size + kv_size].view(1, n, kv_heads, dim)
                    if layer.q_norm is not None:
                        q, k = rms(q, layer.q_norm), rms(k, layer.k_norm)
                    q, k = q.transpose(1, 2), k.transpose(1, 2)
                    v = v.reshape(1, n, kv_heads, dim).transpose(1, 2)
                    q = q * cos + rotate_half(q) * sin
                    k = k * cos + rotate_half(k) * sin
                keys, values = self.keys[index], self.values[index]
                keys[:, :, start:end] = k
                values[:, :, start:end] = v
                keys, values = keys[:, :, :end], values[:, :, :end]
                if n == 1:
                    # The query heads sharing a key/value head, as the rows of one call.
                    grouped = q.reshape(1, kv_heads, heads // kv_heads, dim)
                    out = functional.scaled_dot_product_attention(
                        grouped, keys, values, scale=self.scaling
                    ).reshape(1, 1, heads * dim)
                else:
                    if kv_heads != heads:
                        keys = keys.repeat_interleave(heads // kv_heads, dim=1)
                        values = values.repeat_interleave(heads // kv_heads, dim=1)
                    mask = None
                    if start:  # the new rows see the whole cache and themselves causally
                        mask = torch.ones((n, end), dtype=torch.bool, device=device).tril(start)
                    out = functional.scaled_dot_product_attention(
                        q, keys, values, attn_mask=mask, is_causal=not start, scale=self.scaling
                    )
                    out = out.transpose(1, 2).reshape(1, n, heads * dim)
                x = _after_attention(x, out, layer)
            x = rms(x[:, -1:], self.norm)
            logits = linear(x, self.lm_head.weight, self.lm_head.bias)
            self.length = end
            return logits[0, -1].float().cpu().numpy()

    def decode_rows(
        self, ids: Any, positions: Any, visible: Any, keys: list[Any], values: list[Any]
    ) -> np.ndarray:
        """One token for each row of a batch (`ids`: rows x 1) at its own position, against
        the per-layer caches `keys`/`values` (rows, key/value heads, length, head dim; views
        written in place); `visible` (rows, 1, 1, length) masks each row's own positions.
        The logits after each row's token (rows x vocabulary, float32)."""
        torch = self.torch
        functional = torch.nn.functional
        linear, rms = functional.linear, _rms_norm
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        rows = ids.shape[0]
        q_size, kv_size = heads * dim, kv_heads * dim
        every = torch.arange(rows, device=ids.device)
        with torch.inference_mode():
            x = self.embed(ids)  # (rows, 1, hidden)
            cos = self.cos[positions][:, None, None]  # (rows, 1, 1, head_dim)
            sin = self.sin[positions][:, None, None]
            for index, layer in enumerate(self.layers):
                h = rms(x, layer.norm_in)
                y = linear(h, *layer.qkv)
                v = y[..., q_size + kv_size :].view(rows, kv_heads, 1, dim)
                if layer.q_norm is None:
                    qk = y[..., : q_size + kv_size].view(rows, heads + kv_heads, 1, dim)
                    qk = torch.addcmul(qk * cos, rotate_half(qk), sin)
                    q, k = qk[:, :heads], qk[:, heads:]
                else:
                    q = rms(y[..., :q_size].view(rows, heads, 1, dim), layer.q_norm)
                    k = rms(
                        y[..., q_size : q_size + kv_size].view(rows, kv_heads, 1, dim), layer.k_norm
                    )
                    q = q * cos + rotate_half(q) * sin
                    k = k * cos + rotate_half(k) * sin
                keys[index][every, :, positions] = k[:, :, 0]
                values[index][every, :, positions] = v[:, :, 0]
                grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim)
                out = functional.scaled_dot_product_attention(
                    grouped, keys[index], values[index], attn_mask=visible, scale=self.scaling
                ).reshape(rows, 1, heads * dim)
                x = _after_attention(x, out, layer)
            x = rms(x, self.norm)
            logits = linear(x, self.lm_head.weight, self.lm_head.bias)
            return logits[:, -1].float().cpu().numpy()


@attrs.frozen
class _Layer:
    norm_in: tuple[Any, float]
    qkv: tuple[Any, Any]
    o_proj: Any
    q_norm: tuple[Any, float] | None
    k_norm: tuple[Any, float] | None
    norm_post: tuple[Any, float]
    gate_up: tuple[Any, Any]
    intermediate: int
    down: Any


def _fuse(linears: list[Any]) -> tuple[Any, Any]:
    """One (weight, bias) for Linear layers that read the same input, their outputs side by
    side: one matrix-vector product instead of several small ones. The layers' weights become
    views of the joined matrix, so the model's memory does not grow and the layers (and
    anything that changes their weights in place, such as merging an adapter) still agree."""
    import torch

    weight = torch.cat([m.weight.detach() for m in linears])
    biases = [m.bias for m in linears]
    bias = None
    if all(b is not None for b in biases):
        bias = torch.cat([b.detach() for b in biases])
    elif any(b is not None for b in biases):
        bias = torch.cat(
            [b.detach() if b is not None else m.weight.new_zeros(m.weight.shape[0])
             for b, m in zip(biases, linears, strict=True)]
        )  # fmt: skip
    offset = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[offset : offset + rows], requires_grad=False)
        if m.bias is not None and bias is not None:
            m.bias = torch.nn.Parameter(bias[offset : offset + rows], requires_grad=False)
        offset += rows
    return weight, bias


def _after_attention(x: Any, attended: Any, layer: _Layer) -> Any:
    """The rest of a decoder layer: the attention's output projection added to the residual,
    then the SwiGLU MLP (gate and up from one product) added to it."""
    import torch

    linear = torch.nn.functional.linear
    x = x + linear(attended, layer.o_proj.weight, layer.o_proj.bias)
    z = linear(_rms_norm(x, layer.norm_post), *layer.gate_up)
    size = layer.intermediate
    gated = torch.nn.functional.silu(z[..., :size]) * z[..., size:]
    return x + linear(gated, layer.down.weight, layer.down.bias)


def _rms_norm(x: Any, norm: tuple[Any, float]) -> Any:
    # transformers' LlamaRMSNorm in one call: normalized in float32 inside torch's kernel and
    # scaled by the weight (transformers rounds to the input's dtype before the scale: in
    # bfloat16 the two differ by at most one rounding; in float32 they agree to it).
    import torch

    weight, eps = norm
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def rotate_half(x: Any) -> Any:
    """The rotary embedding's half-turn: (-second half, first half) of the last dimension."""
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


__all__ = ["STATIC_ROPE", "SUPPORTED", "StaticDecoder", "rotate_half", "unsupported_reason"]
