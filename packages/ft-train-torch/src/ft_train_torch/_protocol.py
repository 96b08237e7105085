"""Copies of ft-runs' `Capabilities` and `TrainResult`, used only where ft-runs is not installed
(the trainer does not depend on its consumer; see ft_runs/protocols.py for the originals)."""

from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class Capabilities:
    backend: str
    methods: tuple[str, ...]
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    distributed: bool = False
    notes: tuple[str, ...] = ()


@attrs.frozen
class TrainResult:
    reason: str
    step: int
    adapter_path: Path | None
    best_checkpoint: Path | None
    metrics: dict[str, float] = attrs.field(factory=dict)
