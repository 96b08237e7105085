"""One decoding step of the static loop compiled with `torch.compile` (inductor), for the CPU.

Decoding one token of a small model is a few hundred tiny operations between the matrix-vector
products; in eager torch each costs a Python call and a dispatch (SmolLM2-135M: about 4 ms of a
13 ms token on a 2-core EPYC, measured with the products taken out). Compiled, the whole step
is one C++ function: RMSNorm, the rotation, the cache write and the SwiGLU are fused loops, and
the products are the same aten kernels as before. The step has fixed shapes (the cache's
capacity, the model's sizes), so it is compiled once per capacity (the cache doubles, so a few
times in a long conversation) and inductor's on-disk cache makes every later process's compile
a few seconds instead of tens.

The arithmetic is the eager loop's (the same weights, the same order of products); inductor
fuses the elementwise work in float32, so in bfloat16 the logits differ from the eager step's
by a rounding or two (tests/test_compiled_decode.py bounds it).

The step attends over the cache's whole capacity with a mask (fixed shapes); the cache is
zeroed when allocated, so the masked positions are finite and count for exactly nothing.
"""

from __future__ import annotations

import functools
import shutil
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ft_models.generation.static_decode import rotate_half

_LIMIT = 64
"""Compiled variants kept per process (dynamo's default of 8 is shared by every model and cache
capacity a server holds)."""


@functools.cache
def compile_unavailable() -> str | None:
    """Why `torch.compile` cannot build CPU code here (None: it can). Inductor needs a C++
    compiler on the PATH and Python's C headers."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        compiler = get_cpp_compiler()
    except Exception as error:
        return f"no C++ compiler for torch.compile ({error})"
    if shutil.which(compiler) is None:
        return f"torch.compile's C++ compiler {compiler!r} is not on the PATH"
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not headers.is_file():
        return f"Python's C headers are missing ({headers}; on Debian: apt install python3-dev)"
    return None


@functools.cache
def _compiled() -> Any:
    """The compiled step function, shared by every decoder of the process (its guards are the
    shapes and dtypes of the arguments, so fine-tunes of one model share a compile)."""
    import inspect
    import logging

    import torch
    import torch._dynamo.config

    # "No CUDA runtime is found" (the CUDA build of torch on a CPU) is not news to a user.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return torch.compile(_decode_one, fullgraph=True, dynamic=False, recompile_limit=_LIMIT)
    # Older torch: the global setting (thread-local in newer torch, hence the argument above).
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if getattr(config, name, _LIMIT) < _LIMIT:
            setattr(config, name, _LIMIT)
    return torch.compile(_decode_one, fullgraph=True, dynamic=False)


def _decode_one(
    token: Any,
    pos: Any,
    embed: Any,
    layers: tuple[tuple[Any, ...], ...],
    caches: list[Any],
    cos: Any,
    sin: Any,
    final: tuple[Any, float],
    head: tuple[Any, Any],
    sizes: tuple[int, int, int, float],
) -> Any:
    """Logits (float32, vocabulary) after `token` at position `pos` (both 1-element long
    tensors); writes the token's keys and values into `caches` (per layer: 2 x key/value
    heads, capacity, head dim; keys first)."""
    import torch

    functional = torch.nn.functional
    rms = functional.rms_norm
    heads, kv_heads, dim, scaling = sizes
    q_size, kv_size = heads * dim, kv_heads * dim
    x = functional.embedding(token, embed)[0]
    hidden = (x.shape[-1],)
    c, s = cos[pos], sin[pos]  # (1, head dim)
    visible = torch.arange(caches[0].shape[1], device=x.device) <= pos
    for layer, cache in zip(layers, caches, strict=True):
        (norm_in, eps_in, qkv, qkv_bias, o_proj, o_bias, q_norm, k_norm,
         norm_post, eps_post, gate_up, gate_up_bias, size, down, down_bias) = layer  # fmt: skip
        y = _linear(rms(x, hidden, norm_in, eps_in), qkv, qkv_bias)
        q = y[:q_size].view(heads, dim)
        k = y[q_size : q_size + kv_size].view(kv_heads, dim)
        v = y[q_size + kv_size :].view(kv_heads, dim)
        if q_norm is not None:
            q = rms(q, (dim,), q_norm[0], q_norm[1])
            k = rms(k, (dim,), k_norm[0], k_norm[1])
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        cache.index_copy_(1, pos, torch.cat((k, v))[:, None])
        out = functional.scaled_dot_product_attention(
            q.view(kv_heads, heads // kv_heads, dim),
            cache[:kv_heads],
            cache[kv_heads:],
            attn_mask=visible,
            scale=scaling,
        )
        x = x + _linear(out.reshape(-1), o_proj, o_bias)
        z = _linear(rms(x, hidden, norm_post, eps_post), gate_up, gate_up_bias)
        x = x + _linear(functional.silu(z[:size]) * z[size:], down, down_bias)
    return _linear(rms(x, hidden, final[0], final[1]), head[0], head[1]).float()


def _linear(x: Any, weight: Any, bias: Any) -> Any:
    # torch.mv, not linear: inductor may turn a one-row linear into its own reduction loop,
    # which reads the weights slower than the BLAS matrix-vector kernel (measured).
    import torch

    y = torch.mv(weight, x)
    return y if bias is None else y + bias


class CompiledStep:
    """`step(token)` of a `StaticDecoder` (single sequence), compiled. Built from the decoder's
    layers; reads and writes its cache. `ready(capacity)` says whether the compile for that
    capacity is done (a `warm` in another thread may be running it)."""

    def __init__(self, decoder: Any) -> None:
        import torch

        self.decoder = decoder
        self.torch = torch
        layers = []
        for layer in decoder.layers:
            layers.append(
                (
                    layer.norm_in[0], layer.norm_in[1], layer.qkv[0], layer.qkv[1],
                    layer.o_proj.weight, layer.o_proj.bias, layer.q_norm, layer.k_norm,
                    layer.norm_post[0], layer.norm_post[1], layer.gate_up[0], layer.gate_up[1],
                    layer.intermediate, layer.down.weight, layer.down.bias,
                )
            )  # fmt: skip
        self.layers = tuple(layers)
        self.sizes = (decoder.heads, decoder.kv_heads, decoder.head_dim, decoder.scaling)
        self.final = decoder.norm
        self.head = (decoder.lm_head.weight, decoder.lm_head.bias)
        self.embed = decoder.embed.weight
        self.compiled: set[int] = set()
        """Capacities whose compile is done."""
        self.seconds: dict[int, float] = {}
        """How long each capacity's compile (with its first step) took."""
        self.busy = False
        """A background `warm` is compiling: steps meanwhile run eagerly."""
        self.background = False
        """Compiles happen in a background thread (once `warm_in_background` was used): a
        step at a capacity not compiled yet starts one and runs eagerly meanwhile."""

    def ready(self, capacity: int) -> bool:
        """Whether a step at `capacity` should run compiled now: not while a background
        compile runs; for a capacity not compiled yet, in the foreground unless compiles are
        in the background (then one starts, and this step runs eagerly)."""
        if self.busy:
            return False
        if capacity in self.compiled or not self.background:
            return True
        warm_in_background(self, (capacity,))
        return False

    def __call__(
        self, token: int, position: int, caches: list[Any], cos: Any, sin: Any
    ) -> np.ndarray:
        """The logits after `token` at `position`, its keys and values written into `caches`
        (per layer: 2 x key/value heads, capacity, head dim), rotated by the tables `cos` and
        `sin` (position, head dim; at least the capacity). Compiles first for a new capacity."""
        torch = self.torch
        capacity = caches[0].shape[1]
        started = time.perf_counter()
        with torch.inference_mode():
            logits = _compiled()(
                torch.tensor([token], dtype=torch.long), torch.tensor([position], dtype=torch.long),
                self.embed, self.layers, caches, cos[:capacity], sin[:capacity], self.final,
                self.head, self.sizes,
            )  # fmt: skip
        if capacity not in self.compiled:
            self.compiled.add(capacity)
            self.seconds[capacity] = time.perf_counter() - started
        return logits.numpy()

    def warm(self, capacity: int) -> None:
        """Compile for `capacity` now (on a scratch cache), so that the first real step at
        that capacity does not wait for it: what a background thread calls."""
        torch = self.torch
        if capacity in self.compiled:
            return
        decoder = self.decoder
        weight = decoder.lm_head.weight
        shape = (2 * decoder.kv_heads, capacity, decoder.head_dim)
        scratch = [torch.zeros(shape, dtype=weight.dtype) for _ in decoder.layers]
        scratch_decoder = decoder.fork()
        scratch_decoder.rotary_tables(capacity)
        self(0, 0, scratch, scratch_decoder.cos, scratch_decoder.sin)


_THREADS: set[threading.Thread] = set()


def compiling() -> bool:
    """Whether a background compile (`warm_in_background`) is still running."""
    return any(thread.is_alive() for thread in _THREADS)


def exit_now_if_compiling(code: int = 0) -> None:
    """End the process at once (stdio flushed) when a background compile is still running.

    Python's shutdown with inductor's compile still running in a thread aborts the process
    ("terminate called without an active exception"); a command that is done with the model
    leaves this way instead. Inductor writes its on-disk cache by atomic renames, so nothing
    half-written is left."""
    import os
    import sys

    if compiling():
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def warm_in_background(step: CompiledStep, capacities: tuple[int, ...]) -> threading.Thread:
    """Compile `step` for each capacity in a daemon thread (errors become a warning: the eager
    step keeps serving)."""

    def run() -> None:
        try:
            for capacity in capacities:
                step.warm(capacity)
        except Exception as error:
            step.decoder.compile_failed(error)
        finally:
            step.busy = False

    step.busy = True  # before the thread starts: no step may begin a compile of its own
    step.background = True

    thread = threading.Thread(target=run, name="ft-compile-decode", daemon=True)
    _THREADS.add(thread)
    thread.start()
    return thread


__all__ = [
    "CompiledStep",
    "compile_unavailable",
    "compiling",
    "exit_now_if_compiling",
    "warm_in_background",
]
