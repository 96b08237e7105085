"""`ft_train_torch.host_memory`: while a CPU run trains, freed memory stays in the process, so
a step's fresh activations reuse pages already touched instead of faulting new ones in; the
settings are restored when the run ends, and `FT_KEEP_FREED_MEMORY=0` turns it off."""

from __future__ import annotations

import contextlib
import sys

import pytest

from ft_train_torch import host_memory

pytestmark = pytest.mark.skipif(
    host_memory._glibc() is None, reason="glibc's malloc settings: Linux with glibc only"
)


_MEASURE = """
import contextlib, json, resource
import torch
from ft_train_torch import host_memory

def faults_of_steps():
    # 10 'steps' that each allocate and free a few 48 MB tensors (glibc maps blocks over
    # 32 MB afresh each time by default, whatever it saw before).
    x = torch.randn(2, 512, 12_288)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a = x * 2
        b = torch.nn.functional.silu(a)
        c = a * b
        del a, b, c
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_steps()
with contextlib.ExitStack() as stack:
    assert host_memory.keep_freed_memory(stack)
    faults_of_steps()  # the first step faults its memory in once
    kept = faults_of_steps()
after = faults_of_steps()
print(json.dumps({"default": default, "kept": kept, "after": after}))
"""


def test_freed_memory_is_reused_while_kept_and_given_back_after() -> None:
    # In a fresh interpreter: glibc's state depends on what the process allocated and which
    # settings it changed before (a run trained earlier in the same pytest worker).
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=300, check=True
    )
    faults = json.loads(done.stdout.strip().splitlines()[-1])
    default, kept, after = faults["default"], faults["kept"], faults["after"]
    # 10 steps x 3 tensors x 12,288 pages: ~370,000 faults when nothing is reused; while kept,
    # none (alone) to ~25,000 (beside another busy process: glibc's own choices vary there).
    assert default > 100_000, faults
    assert kept < default / 5, faults
    assert after > 50_000, faults  # glibc's own settings again: blocks mapped afresh


def test_it_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FT_KEEP_FREED_MEMORY", "0")
    with contextlib.ExitStack() as stack:
        assert not host_memory.keep_freed_memory(stack)


def test_nothing_changes_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with contextlib.ExitStack() as stack:
        assert not host_memory.keep_freed_memory(stack)
