"""The protocol between ft-runs and the trainers (ft-train-torch, ft-train-mlx, third parties).

ft-runs declares it; a trainer implements it without importing ft-runs' internals. Trainers
are found through the entry point group `ft.trainers` (`torch = "ft_train_torch.trainer:TorchTrainer"`).

A run is handed to a trainer as a `TrainJob`: the resolved config, a local model folder, the
prepared datasets (HDF5 files in ft-data's format) and the run folder. The trainer reports
progress as events, plain dicts with a `type` key, through `emit`:

| type | keys (besides `type`) |
| --- | --- |
| `start` | `total_steps`, `trainable_params`, `total_params`, `device`, `dtype`, `resumed_from_step` |
| `step` | `step`, `epoch` (float), `loss`, `learning_rate`, `grad_norm`, `tokens` (non-padding tokens this step), `tokens_per_s`, `elapsed_s`, `memory_bytes` (peak so far, or null) |
| `eval` | `step`, `eval_loss`, `perplexity`, `is_best`; classification runs add `accuracy` |
| `checkpoint` | `step`, `path`, `is_best` |
| `message` | `level` (`info`/`warning`/`error`), `text` |
| `end` | `step`, `reason` (`completed`/`early_stopping`/`interrupted`/`nan`/`max_steps`), `adapter_path`, `best_checkpoint` |

`should_stop()` is polled between steps; when it returns True the trainer saves a checkpoint
and returns with reason `interrupted` (this is how Ctrl-C and `ft runs stop` work).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from ft_config import TrainConfig
from ft_runs.batch_plan import BatchPlan

Event = dict[str, Any]
Emit = Callable[[Event], None]


@attrs.frozen
class Capabilities:
    """What a trainer can do on this machine."""

    backend: str
    methods: tuple[str, ...]
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    distributed: bool = False
    notes: tuple[str, ...] = ()
    # Methods it can shard across processes (`resources.strategy: fsdp`); empty: none.
    sharded_methods: tuple[str, ...] = ()


@attrs.frozen
class Placement:
    """Where and how a config would train on this machine: the device (`cpu`, `cuda:N`,
    `mps`, `mlx` for MLX on a GPU, `mlx-cpu`), the compute precision (`fp32`, `bf16`,
    `fp16`) and the dtype the base weights load in. What `ft train`'s plan estimates for."""

    device: str
    precision: str
    weights_dtype: str


@attrs.frozen
class TrainJob:
    """Everything a trainer needs for one run; all paths are local and already exist."""

    config: TrainConfig
    model_path: Path
    train_data: Path
    validation_data: Path | None
    run_dir: Path
    resume_from: Path | None = None
    plan: BatchPlan | None = None
    """How to batch the data (ft_runs.plan): made and checked by `ft train` before training.
    None: the trainer makes it itself (`ft_runs.plan.batch_plan_for`)."""

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        """Where the final adapter (PEFT layout) or full model goes."""
        return self.run_dir / "adapter"


@attrs.frozen
class TrainResult:
    """How a run ended."""

    reason: str
    step: int
    adapter_path: Path | None
    best_checkpoint: Path | None
    metrics: dict[str, float] = attrs.field(factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """A training backend."""

    name: str

    def capabilities(self) -> Capabilities:
        """What this backend supports here (cheap: no model loading)."""
        ...

    def placement(self, config: TrainConfig) -> Placement:
        """The device, precision and weights dtype `config` would train with here (no model
        loading): the same choices `train` makes."""
        ...

    def train(self, job: TrainJob, emit: Emit, should_stop: Callable[[], bool]) -> TrainResult:
        """Train `job`, emitting events, until done, stopped, or failed. Raises on errors the
        user must fix (bad method for this model, out of memory after backing off...)."""
        ...
