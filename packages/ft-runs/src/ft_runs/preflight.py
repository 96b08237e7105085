"""What `ft train` does between preparing the data and starting the trainer: make the run's
plan and print it (or refuse a run that cannot fit), and, while the trainer works, watch the
memory so that a run that grows past what the machine has stops with a checkpoint and a
message instead of being killed by the kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ft_config import TrainConfig
from ft_runs.trainers import get_trainer
from ft_train_core.batch_plan import DatasetSize, packs, saved_batch_plan
from ft_train_core.plan import Plan, make_plan, memory_budget, model_shape
from ft_train_core.protocol import Placement

Say = Callable[[str], None]


def plan_run(
    config: TrainConfig,
    model_path: Path,
    train_data: Path,
    backend: str,
    *,
    held_out: tuple[float, int] | None = None,
    processes: int = 1,
    resume_from: Path | None = None,
    say: Say = print,
) -> Plan:
    """The plan of this run, printed through `say`; raises `ft_train_core.plan.PlanRefused` when
    it cannot fit. `held_out`: the (validation_split, seed) still to hold out of
    `train_data`, so the plan counts the rows the trainer will get."""
    placement = _placement(config, backend)
    size = DatasetSize.of(train_data, packing=packs(config))
    if held_out is not None:
        size = size.subset(training_rows(train_data, *held_out))
    resumed = saved_batch_plan(resume_from, config) if resume_from is not None else None
    plan = make_plan(
        config,
        size,
        model_shape(model_path),
        budget=memory_budget(config, placement.device, processes=processes),
        device=placement.device,
        precision=placement.precision,
        weights_dtype=placement.weights_dtype,
        processes=processes,
        # Processes on GPUs add their speeds; on a CPU they share its cores.
        flops_per_second=_speed(backend, placement)
        * (processes if placement.device.startswith("cuda") else 1),
        resumed=resumed,
    )
    for index, line in enumerate(plan.lines()):
        say(f"{'plan:' if index == 0 else '':<5} {line}")
    for warning in plan.warnings:
        say(f"warning: {warning}")
    return plan


def training_rows(path: Path, fraction: float, seed: int) -> Any:
    """The rows of the prepared dataset at `path` that stay for training when `fraction` is
    held out with `seed` (the split `materialize_split` writes)."""
    from ft_data.hdf5 import PreparedDataset
    from ft_data.split import split_rows

    with PreparedDataset(path) as source:
        labels = source.labels()
        rows, held = split_rows(
            len(source),
            fraction=fraction,
            seed=seed,
            labels=None if labels is None else list(labels),
        )
    return rows if len(held) else list(range(len(source)))


def _placement(config: TrainConfig, backend: str) -> Placement:
    trainer = get_trainer(backend)
    if hasattr(trainer, "placement"):
        return trainer.placement(config)
    return Placement("cpu", "fp32", "float32")  # a trainer that does not say: the plainest


def _speed(backend: str, placement: Placement) -> float:
    """The device's matrix speed in FLOP/s (0 when it cannot be measured here)."""
    from ft_models.compute import matmul_speed

    device = placement.device
    if device.startswith("mlx"):
        device = "gpu" if device == "mlx" else "cpu"
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[placement.precision]
    try:
        return matmul_speed(backend, device, dtype)
    except Exception:  # no estimate is better than no run
        return 0.0


@contextlib.contextmanager
def memory_guard(
    config: TrainConfig,
    plan: Plan,
    *,
    stop: Callable[[], None],
    say: Say,
    interrupt: bool = True,
) -> Iterator[Any]:
    """Watch the RAM of this process and its children while the trainer runs.

    At 90% of what the machine lets this process tree use, `stop()` asks the trainer to save
    a checkpoint after the current step and end; at 97%, when `interrupt`, the current
    training step is interrupted with `MemoryLimitReached` (through `GATE`: only inside a
    step's forward and backward passes; the loops then save the last complete step, and it
    propagates). Both say why, with the figures. Yields the watchdog (its `soft_reached`,
    `hard_reached` and `peak` tell what happened).
    """
    from ft_models.memory_watchdog import GATE, MemoryWatchdog
    from ft_models.ram import ram

    if config.resources.max_memory_gb:
        limit, source = int(config.resources.max_memory_gb * 1e9), "resources.max_memory_gb"
    else:
        machine = ram()
        limit, source = machine.available_bytes + tree_memory(), machine.source

    def soft(used: int) -> None:
        say(
            f"warning: memory: training uses {used / 1e9:.1f} GB of the {limit / 1e9:.1f} GB this "
            f"process may use ({source}; the plan estimated "
            f"{_estimated(plan)}): saving a checkpoint and stopping after this step"
        )
        stop()

    def hard(used: int) -> None:
        if interrupt:
            # Raised inside the current (or next) training step, where nothing is half-saved.
            GATE.interrupt(watchdog.limit_reached(used))

    watchdog = MemoryWatchdog(limit, source=source, on_soft=soft, on_hard=hard, read=tree_memory)
    try:
        with watchdog:
            yield watchdog
    finally:
        GATE.reset()


def tree_memory() -> int:
    """Resident memory of this process and its children (trainer processes): what the kernel
    weighs against the limit. A module function, so tests can script what it reads."""
    from ft_models.ram import tree_rss_bytes

    return tree_rss_bytes()


def _estimated(plan: Plan) -> str:
    if plan.estimate is None:
        return "nothing: unknown architecture"
    return f"{plan.estimate.total_bytes / 1e9:.1f} GB"
