"""`ft_train_torch.host_memory`: while a CPU run trains, freed memory stays in the process, so
a step's fresh activations reuse pages already touched instead of faulting new ones in; the
settings are restored when the run ends, and `FT_KEEP_FREED_MEMORY=0` turns it off."""

from __future__ import annotations

import contextlib
import resource
import sys

import pytest
import torch

from ft_train_torch import host_memory

pytestmark = pytest.mark.skipif(
    host_memory._glibc() is None, reason="glibc's malloc settings: Linux with glibc only"
)


def _faults_of_steps() -> int:
    """Minor page faults of 10 'steps' that each allocate and free a few 48 MB tensors (glibc
    maps blocks over 32 MB afresh each time by default, whatever it saw before)."""
    x = torch.randn(2, 512, 12_288)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a = x * 2
        b = torch.nn.functional.silu(a)
        c = a * b
        del a, b, c
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_while_kept_and_given_back_after() -> None:
    default = _faults_of_steps()
    with contextlib.ExitStack() as stack:
        assert host_memory.keep_freed_memory(stack)
        _faults_of_steps()  # the first step faults its memory in once
        kept = _faults_of_steps()
    after = _faults_of_steps()
    # 10 steps x 3 tensors x 12,288 pages: ~370,000 faults when nothing is reused.
    assert default > 100_000, default
    assert kept < default / 20, (kept, default)
    assert after > 100_000, after  # glibc's own settings again


def test_it_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FT_KEEP_FREED_MEMORY", "0")
    with contextlib.ExitStack() as stack:
        assert not host_memory.keep_freed_memory(stack)


def test_nothing_changes_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with contextlib.ExitStack() as stack:
        assert not host_memory.keep_freed_memory(stack)
