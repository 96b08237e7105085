"""Keep freed memory in the process while a CPU run trains, instead of giving it back to the
system and faulting it in again at the next step.

A training step on a CPU allocates its activations afresh every step: SmolLM2-135M's MLP alone
makes several 6 MB tensors a layer for two packed rows of 512. glibc's `malloc` serves blocks
that large with `mmap` (or trims them off its heap when freed), so the next step's tensor is
new memory, and its first write takes a page fault per 4 KB page: an elementwise op on a fresh
6 MB tensor took 1.6 ms against 0.25 ms on memory already touched (measured here), and a
forward and backward pass over 6 packed batches took about 300,000 page faults. With glibc told
to keep what is freed (no `mmap` for large blocks, no trimming, one arena for all threads) the
same work takes a few thousand faults and runs 5 to 15% faster (docs/training.md, Speed).

The cost: memory freed after the step's peak stays in the process until the run ends (its
peak resident size is what it was, since the next step needs that memory again). Linux with
glibc only; elsewhere, and with `FT_KEEP_FREED_MEMORY=0`, nothing changes. The settings are
restored, and the kept memory given back (`malloc_trim`), when the run ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_MMAP_MAX = 65536
"""glibc's defaults, restored afterwards (the trim threshold's default is dynamic; 128 KiB is
where it starts)."""
DEFAULT_TRIM_THRESHOLD = 128 * 1024
KEEP = 2**31 - 1  # mallopt takes a C int


def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (not musl)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def keep_freed_memory(stack: contextlib.ExitStack) -> bool:
    """Tell glibc to keep freed memory in the process until `stack` closes (then restore its
    settings and trim). False where it does not apply (not glibc, or turned off)."""
    if os.environ.get("FT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, KEEP)):
        return False
    # Not M_ARENA_MAX=1 (one arena for every thread): it did take the last faults away, but
    # the threads then wait on one lock; bf16 steps ran 10-30% slower with it (measured).

    def restore() -> None:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)

    stack.callback(restore)
    return True


__all__ = ["keep_freed_memory"]
