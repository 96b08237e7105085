"""Which catalog models fit in memory: what `ft models list --fits` shows, as plain data.

A model fits when the estimate of its training memory (`ft_models.catalog.training_memory`)
is under :data:`FIT_FRACTION` of the budget: the operating system and other programs need
the rest. The budget is a size given, or this machine's (`ft_models.machine.machine_memory`).
"""

from __future__ import annotations

from typing import Any

import attrs

from ft_models.catalog import CATALOG, training_memory
from ft_models.machine import machine_memory

FIT_FRACTION = 0.9
"""A model fits when its estimate is under this share of the memory."""


@attrs.frozen
class MemoryBudget:
    """The memory to fit in: ``bytes`` in all, what they are (``source``: `GPU <name>`,
    `RAM`, `unified memory`, or how the caller got them), and the ``usable_bytes`` a
    training job may take."""

    bytes: int
    source: str

    @property
    def usable_bytes(self) -> int:
        return int(self.bytes * FIT_FRACTION)

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "source": self.source, "usable_bytes": self.usable_bytes}


def memory_budget(size: int | None = None, source: str = "given") -> MemoryBudget:
    """``size`` bytes (described as ``source``), or, without a size, this machine's memory."""
    if size is not None:
        return MemoryBudget(size, source)
    return MemoryBudget(*machine_memory())


def catalog_memory(
    *,
    max_parameters: int | None = None,
    budget: MemoryBudget | None = None,
    method: str = "lora",
    batch_size: int = 1,
    seq_len: int = 2048,
) -> list[dict[str, Any]]:
    """The catalog entries (``CatalogEntry.as_dict()``) with ``memory``: the training memory
    of each method (lora, qlora, full; bytes, at ``batch_size`` x ``seq_len`` tokens in
    bfloat16), and ``fits``: whether ``method`` fits ``budget`` (None without a budget).
    Entries over ``max_parameters``, and with a budget those that do not fit, are left out."""
    rows = []
    for entry in CATALOG:
        if max_parameters is not None and entry.parameters > max_parameters:
            continue
        memory = training_memory(entry.shape, batch_size=batch_size, seq_len=seq_len)
        fit = None
        if budget is not None:
            need = memory.get(method)
            fit = need is not None and need <= budget.usable_bytes
            if not fit:
                continue
        rows.append({**entry.as_dict(), "memory": memory, "fits": fit})
    return rows
