"""The compiled decode step's code (`decode_one`) and its build, run in a process of its own.

`torch.export` keeps process-wide state while it traces: `torch.compiler.is_exporting()` is
one flag for the whole process, and while it is set every function torch wraps with
`torch._dynamo.disable` (in eager code too: `1.0 / tensor` on the way to a model's rotary
tables) writes to one shared dictionary (`torch.fx.traceback.current_meta`). A build in a
thread of the process that decodes (`ft chat`, `ft serve`) therefore raced with whatever the
other threads ran: loading a second model during a build failed with `KeyError: 'custom'`
(measured: 1 run in 6 of the CLI's compile test). Inductor's lowering is also Python, so a
build in a thread took the interpreter lock from the eager steps serving meanwhile.

So a build runs in a child process (`python -m ft_models.generation.decode_build`, kept for
the next build a minute: `_Builder`).
What it needs is small: the step's arguments are weights, caches and rotary tables whose values
are the step's inputs, never compiled in, so the child gets their shapes, strides, dtypes and
which of them are one tensor (tied embeddings), as JSON (`describe`), makes uninitialised
tensors of the same layout (`arguments_of`: pages never touched, no memory), and builds the same
package the parent would have. The parent waits for it in its own thread, without the GIL.

A command that leaves mid-build kills the child (`stop_children`); its half-written package
keeps the child's pid in its name, so the next build removes it. A parent that dies otherwise
closes the child's input: the child finishes the build under way (its package is whole and
useful) and leaves. (Not `PR_SET_PDEATHSIG`: Linux sends it when the thread that started the
child ends, and background threads come and go while the builder stays.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from ft_models.generation.static_decode import rotate_half

_CHILDREN_LOCK = threading.Lock()


def decode_one(
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


# --- what the child is told ----------------------------------------------------------------------


def describe(arguments: tuple[Any, ...], sizes: tuple[Any, ...]) -> dict[str, Any]:
    """The step's arguments and sizes as JSON-able data: the pytree's structure, and for each
    leaf its value, or a tensor's shape, strides, dtype and the first leaf it shares storage
    with (export takes one tensor passed twice for one input, and the package must too)."""
    import torch
    import torch.utils._pytree as pytree

    leaves, spec = pytree.tree_flatten((arguments, sizes))
    described: list[dict[str, Any]] = []
    seen: dict[tuple[int, ...], int] = {}
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            where = (leaf.untyped_storage().data_ptr(), leaf.storage_offset(), *leaf.shape)
            first = seen.setdefault(where, index)
            described.append(
                {
                    "shape": list(leaf.shape),
                    "stride": list(leaf.stride()),
                    "dtype": str(leaf.dtype).removeprefix("torch."),
                    "same_as": first if first != index else None,
                }
            )
        elif leaf is None or isinstance(leaf, bool | int | float):
            described.append({"value": leaf})
        else:
            raise TypeError(f"the compiled step cannot take a {type(leaf).__name__} argument")
    return {"tree": pytree.treespec_dumps(spec), "leaves": described}


def arguments_of(description: dict[str, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The arguments and sizes `describe` described, with uninitialised tensors (zeros for the
    two index tensors: the trace reads nothing, but a position must be a valid index)."""
    import torch
    import torch.utils._pytree as pytree

    leaves: list[Any] = []
    for item in description["leaves"]:
        if "value" in item:
            leaves.append(item["value"])
        elif item["same_as"] is not None:
            leaves.append(leaves[item["same_as"]])
        else:
            dtype = getattr(torch, item["dtype"])
            tensor = torch.empty_strided(item["shape"], item["stride"], dtype=dtype)
            if not dtype.is_floating_point:
                tensor.zero_()
            leaves.append(tensor)
    arguments, sizes = pytree.tree_unflatten(leaves, pytree.treespec_loads(description["tree"]))
    return arguments, sizes


# --- the build --------------------------------------------------------------------------------


def build_here(arguments: tuple[Any, ...], sizes: tuple[Any, ...], path: Path) -> None:
    """Export the step for `arguments` and compile it into the package `path`, written under a
    temporary name (with this process' pid) and renamed into place."""
    import logging

    import torch
    import torch._inductor

    from ft_models.generation.compiled_decode import remove_orphans

    # "No CUDA runtime is found" (the CUDA build of torch on a CPU) is not news to a user.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    class Step(torch.nn.Module):
        def forward(
            self, token: Any, position: Any, embed: Any, layers: Any, caches: Any,
            cos: Any, sin: Any, final: Any, head: Any,
        ) -> Any:  # fmt: skip
            return decode_one(token, position, embed, layers, caches, cos, sin, final, head, sizes)

    with torch.inference_mode():
        program = torch.export.export(Step(), arguments, strict=False)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    remove_orphans(path.parent)
    partial = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial.pt2")
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


IDLE_SECONDS = 60.0
"""How long a builder process waits for another build before it leaves (`ft chat` asks for
256 and 512 positions at once; a server for each model it loads)."""


class _Builder:
    """The child process that builds, one request at a time: a line of JSON in (`describe`d
    arguments and the package's path), a line of JSON out. It stays for the next build a
    while (`IDLE_SECONDS`), so a second build skips importing torch and inductor (8 s here)."""

    def __init__(self) -> None:
        # the log lives as long as the builder: it is read when the builder fails
        self.log = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(IDLE_SECONDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            encoding="utf-8",
        )
        self.busy = False

    def ask(self, request: dict[str, Any]) -> str:
        """The child's answer line ("" when it is gone)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return ""
        return self.process.stdout.readline()

    def last_words(self) -> list[str]:
        self.log.seek(0)
        return self.log.read().strip().splitlines()[-12:]


_BUILDER: _Builder | None = None


def build_in_child(arguments: tuple[Any, ...], sizes: tuple[Any, ...], path: Path) -> None:
    """Build the package `path` in the builder process and wait for it (callers build one at a
    time); RuntimeError with the child's last words when it fails or is killed."""
    global _BUILDER
    request = {"arguments": describe(arguments, sizes), "path": str(path)}
    for attempt in range(2):
        with _CHILDREN_LOCK:
            if _BUILDER is None or _BUILDER.process.poll() is not None:
                _BUILDER = _Builder()
            builder = _BUILDER
            builder.busy = True
        try:
            line = builder.ask(request)
        except BaseException:  # Ctrl-C while waiting: the build goes too
            builder.process.kill()
            builder.process.wait()
            raise
        finally:
            builder.busy = False
        if line:
            answer = json.loads(line)
            if not answer["ok"]:
                raise RuntimeError(f"building the compiled step failed: {answer['error']}")
            return
        code = builder.process.wait()
        if code == 0 and attempt == 0:
            continue  # it had just left, idle: a new one builds
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        said = builder.last_words()
        raise RuntimeError(f"building the compiled step failed ({how})" + (": " if said else "")
                           + "\n".join(said))  # fmt: skip


def building() -> bool:
    """Whether the builder process is building now."""
    with _CHILDREN_LOCK:
        return _BUILDER is not None and _BUILDER.busy and _BUILDER.process.poll() is None


def stop_children() -> None:
    """Kill the builder process (a command that leaves mid-build)."""
    with _CHILDREN_LOCK:
        builder = _BUILDER
    if builder is not None and builder.process.poll() is None:
        builder.process.kill()


def main(argv: list[str]) -> int:
    """The builder process: build each request read from stdin; leave at end of input or
    after `idle` seconds without one."""
    import select
    import traceback

    idle = float(argv[0])
    # Answers go through a descriptor of their own: what torch and the C++ compiler print
    # goes to stderr, never into the answers.
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], idle)
        if not ready:
            return 0
        line = sys.stdin.readline()
        if not line:
            return 0
        request = json.loads(line)
        try:
            arguments, sizes = arguments_of(request["arguments"])
            build_here(arguments, sizes, Path(request["path"]))
            answer: dict[str, Any] = {"ok": True}
        except Exception as error:
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
