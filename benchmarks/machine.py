"""What the benchmarks print about the machine, so a ratio is read against the CPU it was
measured on (CPUs of the same kind of machine differ: AVX2 only, AVX512-BF16, AMX)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_features() -> str:
    """The architecture, core count and the x86 flags that decide fp32/bf16 speed."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    have = [f for f in wanted if f in flags] or ["(no x86 flags read)"]
    return f"{platform.machine()}, {os.cpu_count()} cores, {' '.join(have)}"
