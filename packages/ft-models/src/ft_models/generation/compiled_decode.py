"""One decoding step of the static loop compiled ahead of time with AOTInductor, for the CPU,
and kept on disk so that later processes load it in a fraction of a second.

Decoding one token of a small model is a few hundred tiny operations between the matrix-vector
products; in eager torch each costs a Python call and a dispatch (SmolLM2-135M: about 4 ms of a
13 ms token on a 2-core EPYC, measured with the products taken out). Compiled, the whole step
is one C++ function: RMSNorm, the rotation, the cache write and the SwiGLU are fused loops, and
the products are the same aten kernels as before.

The step has fixed shapes (the cache's capacity, the model's sizes), so it is built once per
capacity (the cache doubles, so a few times in a long conversation): `torch.export` traces it
(a few seconds) and AOTInductor compiles it into a package (`.pt2`, a shared library; tens of
seconds on two cores). The weights and the cache are the step's inputs, not baked in, so one
package serves every fine-tune of a model's shape. Packages are kept under ft's home
(`compiled/`), named by a digest of everything the build depends on: torch's version, the CPU's
vector instructions, this module's code, the shapes and dtypes of the weights and the model's
constants (heads, epsilon, scaling). Loading one takes about 0.3 s.

How a `CompiledStep` gets a capacity's package (`build`):
- "foreground": load it, or build it before the step (`ft generate --compile`);
- "background": load it, or build it while the eager step serves (`ft chat`, `ft serve`);
- "cached": load it if an earlier process built it, else the step stays eager (plain
  `ft generate`: a short run would not repay a build).

Every build runs in a child process that a thread of this one waits for (`decode_build` says
why: torch.export's process-wide state raced with the threads that decode meanwhile).

The arithmetic is the eager loop's (the same weights, the same order of products); inductor
fuses the elementwise work in float32, so in bfloat16 the logits differ from the eager step's
by a rounding or two (tests/test_compiled_decode.py bounds it).

The step attends over the cache's whole capacity with a mask (fixed shapes); the cache is
zeroed when allocated, so the masked positions are finite and count for exactly nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ft_models.generation.decode_build import build_in_child, building, stop_children

BUILDS = ("foreground", "background", "cached")


@functools.cache
def compile_unavailable() -> str | None:
    """Why AOTInductor cannot build CPU code here (None: it can). It needs torch 2.6 or later,
    a C++ compiler on the PATH and Python's C headers."""
    try:
        import torch._inductor
        from torch._inductor.cpp_builder import get_cpp_compiler

        if not hasattr(torch._inductor, "aoti_compile_and_package"):
            return f"torch {torch.__version__} has no AOTInductor packages (torch 2.6 or later has)"
        compiler = get_cpp_compiler()
    except Exception as error:
        return f"no C++ compiler for torch's inductor ({error})"
    if shutil.which(compiler) is None:
        return f"inductor's C++ compiler {compiler!r} is not on the PATH"
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not headers.is_file():
        return f"Python's C headers are missing ({headers}; on Debian: apt install python3-dev)"
    return None


def package_folder() -> Path:
    """Where built steps are kept: `compiled/` under ft's home (`ft_config.app_paths`)."""
    from ft_config import app_paths

    return app_paths().home / "compiled"


@functools.cache
def _build_identity() -> str:
    """What every package depends on besides its arguments: torch, the processor (inductor
    compiles for the vector instructions it has) and the code of the step. Cheap to compute:
    looking for a package must not import inductor (seconds)."""
    import platform

    import torch

    from ft_models.generation import decode_build, static_decode

    code = b"".join(Path(m.__file__).read_bytes() for m in (decode_build, static_decode))
    code += Path(__file__).read_bytes()
    processor = f"{platform.system()}/{platform.machine()}/{platform.processor()}"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
        processor += "/" + " ".join(sorted(flags.split(":", 1)[-1].split()))
    except OSError:
        pass  # not Linux: the machine and processor names above
    return f"{torch.__version__}|{processor}|{hashlib.sha256(code).hexdigest()}"


def _tensors(arguments: Any) -> list[Any]:
    """The tensors of `arguments` (nested tuples and lists) in the order torch's pytree
    flattens them, which is the order a package's runner takes its inputs in."""
    import torch

    found: list[Any] = []

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)

    visit(arguments)
    return found


def _digest(arguments: tuple[Any, ...]) -> str:
    """A name for the package of `arguments`: the structure, the tensors' shapes, strides and
    dtypes, and every other value (they are compiled in as constants)."""
    import torch
    import torch.utils._pytree as pytree

    leaves, spec = pytree.tree_flatten(arguments)
    parts = [_build_identity(), str(spec)]
    seen: dict[tuple[int, ...], int] = {}
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            parts.append(f"{tuple(leaf.shape)}/{leaf.stride()}/{leaf.dtype}/{leaf.device.type}")
            # Export takes one tensor passed twice (tied embeddings) for one input: a package
            # built so must not serve a model whose two weights are apart, nor the reverse.
            if leaf.device.type != "meta":  # a stand-in is apart from everything
                where = (leaf.untyped_storage().data_ptr(), leaf.storage_offset(), *leaf.shape)
                parts.append(f"same as {seen.setdefault(where, index)}")
        else:
            parts.append(repr(leaf))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


_BUILDING = threading.Lock()
"""One build at a time in a process: two at once on a laptop's few cores would each take
twice as long (two served models building in the background)."""


def _build_package(arguments: tuple[Any, ...], sizes: tuple[Any, ...], path: Path) -> None:
    """Export the step for `arguments` (what the runner is called with) and compile it into
    the package `path`, in a child process (`decode_build`), written under a temporary name and
    renamed into place (a crash or a kill leaves no half-written package under the final
    name)."""
    with _BUILDING:
        if path.is_file():  # built by another decoder while this one waited
            return
        build_in_child(arguments, sizes, path)


def remove_orphans(folder: Path) -> None:
    """Delete the half-written packages of builds whose process is gone (a command that left
    at once mid-build, `exit_now_if_compiling`, or a kill): they are never loaded, but they
    take disk space."""
    for partial in folder.glob(".*.partial.pt2"):
        try:
            pid = int(partial.name.rsplit(".", 3)[-3].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue  # not ours to judge: another user's process, or an odd name


class CompiledStep:
    """`step(token)` of a `StaticDecoder` (single sequence), compiled. Built from the decoder's
    layers; reads and writes its cache. `build` (one of `BUILDS`) says what happens at a
    capacity whose package is not on disk yet; `ready(capacity)` says whether a step at that
    capacity runs compiled now."""

    def __init__(self, decoder: Any, build: str = "foreground") -> None:
        import torch

        if build not in BUILDS:
            raise ValueError(f"build must be one of {', '.join(BUILDS)}, not {build!r}")
        self.decoder = decoder
        self.torch = torch
        self.build = build
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
        self.runners: dict[int, Any] = {}
        """The loaded package of each capacity."""
        self.seconds: dict[int, float] = {}
        """How long each capacity's package took to build (built here) or load (built before)."""
        self.built: set[int] = set()
        """Capacities whose package this process built (the others were loaded from disk)."""
        self.paths: dict[int, Path] = {}
        self.pending: list[int] = []
        """Capacities waiting for the background thread."""
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    @property
    def compiled(self) -> set[int]:
        """Capacities whose compiled step is loaded."""
        return set(self.runners)

    @property
    def busy(self) -> bool:
        """A background thread is building (steps at capacities not loaded run eagerly)."""
        return self.thread is not None

    def _arguments(self, token: Any, position: Any, caches: list[Any], cos: Any, sin: Any) -> tuple:
        return (token, position, self.embed, self.layers, caches, cos, sin, self.final, self.head)

    def path(self, capacity: int) -> Path:
        """The package of the step at `capacity` (whether built or not)."""
        if capacity not in self.paths:
            torch = self.torch
            weight = self.decoder.lm_head.weight
            shape = (2 * self.decoder.kv_heads, capacity, self.decoder.head_dim)
            # Stand-ins on the meta device (no memory): only their shapes and dtypes count.
            meta = {"dtype": weight.dtype, "device": "meta"}
            caches = [torch.empty(shape, **meta) for _ in self.layers]
            cos, sin = (torch.empty((capacity, self.decoder.head_dim), **meta) for _ in range(2))
            token, position = (torch.empty(1, dtype=torch.long, device="meta") for _ in range(2))
            arguments = self._arguments(token, position, caches, cos, sin)
            digest = _digest((*arguments, self.sizes))
            self.paths[capacity] = package_folder() / f"decode-{capacity}-{digest}.pt2"
        return self.paths[capacity]

    def _load(self, capacity: int) -> bool:
        """Load the package of `capacity` if it is on disk (True: loaded). Through torch's
        C++ loader: a few milliseconds, where `torch._inductor.aoti_load_package` first
        imports inductor (seconds)."""
        path = self.path(capacity)
        if not path.is_file():
            return False
        started = time.perf_counter()
        try:
            runner = self.torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        except Exception:
            # Unreadable (another torch wrote it under the same name, or a disk error): build
            # it again rather than decode eagerly for good.
            path.unlink(missing_ok=True)
            return False
        with self.lock:
            self.runners[capacity] = runner
            self.seconds.setdefault(capacity, time.perf_counter() - started)
        return True

    def warm(self, capacity: int) -> None:
        """Have the package of `capacity` loaded: from disk, or built now (what the background
        thread calls)."""
        if capacity in self.runners or self._load(capacity):
            return
        reason = compile_unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        decoder = self.decoder
        if decoder.cos is None or decoder.cos.shape[0] < capacity:
            scratch = decoder.fork()
            scratch.rotary_tables(capacity)
            cos, sin = scratch.cos, scratch.sin
        else:
            cos, sin = decoder.cos, decoder.sin
        torch = self.torch
        weight = decoder.lm_head.weight
        shape = (2 * decoder.kv_heads, capacity, decoder.head_dim)
        caches = [torch.zeros(shape, dtype=weight.dtype) for _ in decoder.layers]
        # Two tensors, not one twice: export would take them for one input (aliased).
        token, position = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        started = time.perf_counter()
        arguments = self._arguments(token, position, caches, cos[:capacity], sin[:capacity])
        _build_package(arguments, self.sizes, self.path(capacity))
        seconds = time.perf_counter() - started
        if not self._load(capacity):
            raise RuntimeError(f"the compiled step built at {self.path(capacity)} is not there")
        self.built.add(capacity)
        self.seconds[capacity] = seconds

    def ready(self, capacity: int) -> bool:
        """Whether a step at `capacity` runs compiled now: its package is loaded or on disk;
        else it is built now ("foreground"), in the background ("background": this step runs
        eagerly), or not at all ("cached")."""
        if capacity in self.runners:
            return True
        if capacity in self.pending:
            return False
        if self._load(capacity):
            return True
        if self.build == "foreground":
            self.warm(capacity)
            return True
        if self.build == "background":
            warm_in_background(self, (capacity,))
        return False

    def __call__(
        self, token: int, position: int, caches: list[Any], cos: Any, sin: Any
    ) -> np.ndarray:
        """The logits after `token` at `position`, its keys and values written into `caches`
        (per layer: 2 x key/value heads, capacity, head dim), rotated by the tables `cos` and
        `sin` (position, head dim; at least the capacity). The capacity's package must be
        loaded (`ready`). The position must be under the capacity (the compiled code stops
        the process on an index out of bounds: there is no exception to catch)."""
        torch = self.torch
        capacity = caches[0].shape[1]
        if not 0 <= position < capacity:
            raise IndexError(f"position {position} is outside a cache of {capacity}")
        inputs = _tensors(
            self._arguments(
                torch.tensor([token], dtype=torch.long),
                torch.tensor([position], dtype=torch.long),
                caches, cos[:capacity], sin[:capacity],
            )
        )  # fmt: skip
        with torch.inference_mode():
            (logits,) = self.runners[capacity].boxed_run(inputs)
        return logits.numpy()


_THREADS: set[threading.Thread] = set()


def compiling() -> bool:
    """Whether a build (a background one, `warm_in_background`, or its child) still runs."""
    return building() or any(thread.is_alive() for thread in _THREADS)


def exit_now_if_compiling(code: int = 0) -> None:
    """Stop the builder process and end this one at once (stdio flushed) when a build is
    still running: a command that is done with the model does not wait for it, nor leave a
    process behind, and the thread that waited for the build does not warn of its end. A
    package is renamed into place only once whole, so nothing half-written is left under its
    name."""
    import sys

    if compiling():
        stop_children()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def warm_in_background(step: CompiledStep, capacities: tuple[int, ...]) -> threading.Thread | None:
    """Have each capacity's package loaded or built, in order, in one background thread per
    step (errors become a warning and turn the compiled step off: the eager step serves).
    The thread (None: nothing left to do)."""

    def run() -> None:
        try:
            while True:
                with step.lock:
                    if not step.pending:
                        step.thread = None
                        return
                    capacity = step.pending[0]
                step.warm(capacity)
                with step.lock:
                    step.pending.remove(capacity)
        except Exception as error:
            with step.lock:
                step.pending.clear()
                step.thread = None
            step.decoder.compile_failed(error)

    with step.lock:
        for capacity in capacities:
            if capacity not in step.runners and capacity not in step.pending:
                step.pending.append(capacity)
        if step.thread is None and step.pending:
            step.thread = threading.Thread(target=run, name="ft-compile-decode", daemon=True)
            _THREADS.add(step.thread)
            step.thread.start()
        return step.thread


__all__ = [
    "BUILDS",
    "CompiledStep",
    "compile_unavailable",
    "compiling",
    "exit_now_if_compiling",
    "package_folder",
    "warm_in_background",
]
