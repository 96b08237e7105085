"""A run's plan, made before any weight is loaded: how the data becomes optimizer steps, how
much memory a step needs, how long the run takes, and whether it can learn anything.

`make_plan` reads the prepared data (example lengths, trained tokens), the model's shape and
the memory this process may use, and decides:

- **the batches** (`BatchPlan`): the row length, the rows per micro-batch and the micro-batches
  per optimizer step. With a fixed `training.batch_size` they are what the config says. With
  `batch_size: auto` ft picks them: the tokens of an optimizer step come from
  `training.tokens_per_step` (or, left at `auto`, from the dataset's size by `auto_tokens_per_step`),
  and the micro-batch is the largest that fits in memory (and no larger than pays on this
  device), gradient accumulation making up the rest. The update is the same either way: the
  loops normalise by the trained tokens of the whole step.
- **the memory check**: the estimate (`ft_models.memory`) of the micro-batch against the
  limit. A fixed plan that cannot fit is refused (`PlanRefused`) with the figures and the
  settings that would make it fit; `auto` never picks one.
- **the advice**: a plan with fewer than `FEW_STEPS` optimizer steps cannot teach much; the
  plan says so and what to change.

Both trainers run the `BatchPlan` they are given (`TrainJob.plan`), or make the same one when
called on their own, and save it with every checkpoint, so a resumed run keeps its batches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ft_config import TrainConfig
from ft_data.batches import Batches
from ft_models.memory import MemoryEstimate, estimate_training_memory
from ft_models.shape import ModelShape
from ft_train_core.batch_plan import (
    BatchPlan,
    DatasetSize,
    count_steps,
    fixed_batch_plan,
    packs,
    saved_batch_plan,
)

FEW_STEPS = 30
"""Fewer optimizer steps than this rarely teach a model anything: the plan warns."""

TARGET_STEPS = 128
"""`tokens_per_step: auto` aims at this many optimizer steps over the whole run."""

AUTO_TOKENS_MIN, AUTO_TOKENS_MAX = 256, 16_384
"""`tokens_per_step: auto` stays in this range (a power of two)."""

MICRO_TOKENS_CAP = {"cpu": 2048, "mlx-cpu": 2048}
"""The largest micro-batch, in tokens, `batch_size: auto` picks on these devices: a CPU's
matrix products are as fast per token at this size as at any larger one (docs/training.md,
'The plan'), and a smaller micro-batch leaves memory free. Elsewhere memory alone decides."""

SAFETY = 0.85
"""A plan's estimated peak stays under this share of the memory limit (the estimate is within
25% of measured peaks; the memory watchdog covers the rest)."""


class PlanRefused(ValueError):
    """The run cannot work as configured: the message says why, with figures, and what to
    change."""


@attrs.frozen
class MemoryBudget:
    """What a training process may use, in bytes, and where that figure comes from."""

    limit_bytes: int
    source: str


def memory_budget(config: TrainConfig, device: str, *, processes: int = 1) -> MemoryBudget:
    """What one training process may use on `device` (`cpu`, `cuda[:N]`, `mps`, `mlx`,
    `mlx-cpu`): `resources.max_memory_gb` when set; a CUDA device's memory; else RAM this
    process may still take (cgroup-aware, `ft_models.ram`) plus what it holds, shared by
    `processes` processes."""
    if config.resources.max_memory_gb:
        return MemoryBudget(int(config.resources.max_memory_gb * 1e9), "resources.max_memory_gb")
    from ft_models.device import memory_info
    from ft_models.ram import rss_bytes

    if device.startswith("cuda"):
        info = memory_info(gpus=True)
        return MemoryBudget(info.for_device(device), f"the memory of {device}")
    info = memory_info(gpus=False)
    if device in ("mps", "mlx") and info.metal_working_set_bytes:
        limit = min(info.metal_working_set_bytes, info.available_bytes)
        return MemoryBudget(limit // processes, "Metal's working set")
    held = rss_bytes() if processes == 1 else 0
    share = f", shared by {processes} processes" if processes > 1 else ""
    source = info.ram_source or "available RAM"
    return MemoryBudget((info.available_bytes + held) // processes, f"{source}{share}")


LOSS_CHUNK_ROWS = 1024
"""Targets whose logits ft's torch trainer computes at once: the loss goes a chunk at a time,
each chunk's logits recomputed in the backward pass (`ft_train_torch.packing`)."""


def model_shape(model_path: Path) -> ModelShape | None:
    """The shape of the model at `model_path` (its config.json), or None for an architecture
    the estimator does not know."""
    import json

    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        return ModelShape.from_hf_config(config)
    except (OSError, ValueError):
        return None


def batch_plan_for(
    job: Any, *, device: str, precision: str, weights_dtype: str, processes: int = 1
) -> tuple[BatchPlan, list[str]]:
    """The batches a trainer runs when `ft train` did not plan them (a trainer called from
    Python), and what was decided, for the trainer to tell: a resumed checkpoint's batches,
    the config's fixed batch, or `make_plan`'s for `batch_size: auto`. Raises PlanRefused as
    `make_plan` does."""
    config = job.config
    if job.resume_from is not None:
        saved = saved_batch_plan(job.resume_from, config)
        if saved is not None:
            return saved, []
    size = DatasetSize.of(job.train_data, packing=packs(config))
    if config.training.batch_size != "auto":
        return fixed_batch_plan(config, size.mode), []
    plan = make_plan(
        config,
        size,
        model_shape(job.model_path),
        budget=memory_budget(config, device, processes=processes),
        device=device,
        precision=precision,
        weights_dtype=weights_dtype,
        processes=processes,
    )
    return plan.batch, [*plan.decisions, *plan.warnings]


@attrs.frozen
class Plan:
    """A run's plan: its batches, steps, memory and time, and what ft decided and why."""

    batch: BatchPlan
    processes: int
    epochs: float
    data: DatasetSize
    optimizer_steps: int
    micro_batches: int | None
    tokens_per_step: int
    precision: str
    estimate: MemoryEstimate | None
    budget: MemoryBudget
    seconds: float | None = None
    decisions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The plan as `ft train` prints it before training."""
        data, batch = self.data, self.batch
        trained = f"{data.trained_tokens:,} trained" if data.trained_tokens else "none trained"
        rows = {
            "pack": f"{batch.micro_batch} row(s) of {batch.row_length:,} tokens (examples packed)",
            "pad": f"{batch.micro_batch} example(s), padded,",
            "chunk": f"{batch.micro_batch} block(s) of {batch.row_length:,} tokens of text",
        }[batch.mode]
        procs = f" x {self.processes} processes" if self.processes > 1 else ""
        accumulate = f" x {batch.accumulation} accumulated" if batch.accumulation > 1 else ""
        time = f", about {_duration(self.seconds)}" if self.seconds else ""
        steps = (
            f"{self.optimizer_steps:,} optimizer steps over {self.epochs:g} epoch(s)"
            if self.micro_batches is not None
            else f"{self.optimizer_steps:,} optimizer steps (training.max_steps)"
        )
        lines = [
            f"{data.examples:,} examples, {data.tokens:,} tokens ({trained}) per epoch",
            f"about {self.tokens_per_step:,} tokens per optimizer step: {rows} per "
            f"micro-batch{accumulate}{procs}",
            f"{steps}{time}",
            f"about {self.estimate.total_bytes / 1e9:.1f} GB of memory at the peak "
            f"({self.precision}), of {self.budget.limit_bytes / 1e9:.1f} GB "
            f"({self.budget.source})"
            if self.estimate is not None
            else "memory not estimated (ft does not know this architecture's shape)",
        ]
        return lines + [f"why: {d}" for d in self.decisions]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for run.json and the job store."""
        return {
            "batch": self.batch.to_dict(),
            "processes": self.processes,
            "epochs": self.epochs,
            "examples": self.data.examples,
            "tokens": self.data.tokens,
            "trained_tokens": self.data.trained_tokens,
            "optimizer_steps": self.optimizer_steps,
            "tokens_per_step": self.tokens_per_step,
            "precision": self.precision,
            "estimated_peak_bytes": self.estimate.total_bytes if self.estimate else None,
            "memory_limit_bytes": self.budget.limit_bytes,
            "memory_limit_source": self.budget.source,
            "estimated_seconds": self.seconds,
            "decisions": list(self.decisions),
            "warnings": list(self.warnings),
        }


def auto_tokens_per_step(tokens_per_epoch: int, epochs: float, longest: int) -> int:
    """`tokens_per_step: auto`: the run's tokens over `TARGET_STEPS`, as a power of two in
    [`AUTO_TOKENS_MIN`, `AUTO_TOKENS_MAX`], and never under the longest example (a row must
    hold it). A hundred short chats (5,000 tokens x 3 epochs) get 256 (about 60 steps),
    Alpaca's 1,000-row sample 4,096 (about 110), a million-token dataset 16,384 and hundreds
    of steps."""
    wanted = max(1.0, tokens_per_epoch * epochs / TARGET_STEPS)
    power = 2 ** round(math.log2(wanted))
    return max(min(max(power, AUTO_TOKENS_MIN), AUTO_TOKENS_MAX), longest)


def make_plan(
    config: TrainConfig,
    data: DatasetSize,
    shape: ModelShape | None,
    *,
    budget: MemoryBudget,
    device: str,
    precision: str,
    weights_dtype: str = "float32",
    processes: int = 1,
    flops_per_second: float | None = None,
    resumed: BatchPlan | None = None,
) -> Plan:
    """The plan of `config` on `data` for a model of `shape` (see the module docstring).

    `device` is `cpu`, `cuda[:N]`, `mps`, `mlx` or `mlx-cpu`; `precision` the compute
    precision (fp32, bf16, fp16), `weights_dtype` the base's. The steps are counted as the
    trainers' loops count them (`count_steps`). `flops_per_second`: the device's measured matrix speed, for the time estimate.
    `resumed`: the batches of the checkpoint a resumed run continues from, kept as they are.
    Raises PlanRefused when the run cannot fit or has no data.
    """
    settings = config.training
    if data.examples == 0:
        raise PlanRefused("the training data has no examples after preparation")
    decisions: list[str] = []
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]

    def estimate(batch: BatchPlan, checkpointing: bool | None = None) -> MemoryEstimate | None:
        if shape is None:
            return None
        return _estimate(config, shape, data, batch, dtype, weights_dtype, checkpointing, device)

    usable = int(SAFETY * budget.limit_bytes)
    if resumed is not None:
        batch = resumed
        decisions.append("batches as the run started (from its checkpoint)")
    elif settings.batch_size == "auto":
        batch, why = _auto_batches(config, data, estimate, usable, device, processes)
        decisions += why
    else:
        batch = _fixed_batches(config, data)
    peak = estimate(batch)
    if peak is not None and peak.total_bytes > usable and resumed is None:
        raise PlanRefused(_too_big(config, data, batch, peak, budget, estimate))
    steps, micro = count_steps(data.lengths, batch, settings, processes=processes)
    per_step = _tokens_per_step(data, batch, processes)
    warnings: list[str] = []
    if steps < FEW_STEPS and settings.max_steps is None:
        warnings.append(_few_steps(config, steps, per_step))
    seconds = None
    if flops_per_second and shape is not None:
        seconds = _seconds(config, shape, data, steps, per_step, flops_per_second)
    return Plan(
        batch=batch,
        processes=processes,
        epochs=settings.epochs,
        data=data,
        optimizer_steps=steps,
        micro_batches=micro,
        tokens_per_step=per_step,
        precision=precision,
        estimate=peak,
        budget=budget,
        seconds=seconds,
        decisions=tuple(decisions),
        warnings=tuple(warnings),
    )


def _fixed_batches(config: TrainConfig, data: DatasetSize) -> BatchPlan:
    return fixed_batch_plan(config, data.mode)


def _auto_batches(
    config: TrainConfig,
    data: DatasetSize,
    estimate: Any,
    usable: int,
    device: str,
    processes: int,
) -> tuple[BatchPlan, list[str]]:
    """`batch_size: auto`: the tokens of a step, then the largest micro-batch that fits."""
    settings, max_len = config.training, config.data.max_seq_length
    longest = max(data.longest, 1)
    if settings.tokens_per_step == "auto":
        wanted = auto_tokens_per_step(data.tokens, settings.epochs, longest)
        why = [
            f"tokens per step: {wanted:,} (auto: about 1/{TARGET_STEPS} of the run's "
            f"{int(data.tokens * settings.epochs):,} tokens, between {AUTO_TOKENS_MIN:,} and "
            f"{AUTO_TOKENS_MAX:,}; set training.tokens_per_step to choose)"
        ]
    else:
        wanted = int(settings.tokens_per_step)
        why = [f"tokens per step: {wanted:,} (training.tokens_per_step)"]
    per_process = max(1, wanted // processes)
    cap = min(per_process, MICRO_TOKENS_CAP.get(device, per_process))
    if data.mode == "pad":
        row = min(max_len, longest)
        rows_needed = max(1, round(per_process / max(float(data.lengths.mean()), 1.0)))
    elif data.mode == "chunk":
        row = max_len
        rows_needed = max(1, round(per_process / row))
    else:
        # Rows no longer than a step's tokens (a small dataset gets short rows and more
        # steps), never shorter than the longest example, never longer than max_seq_length.
        row = min(max_len, max(longest, _round_up(per_process, 64)))
        rows_needed = max(1, round(per_process / row))

    def fits(rows: int) -> bool:
        peak = estimate(BatchPlan(data.mode, row, rows, 1))
        return peak is None or peak.total_bytes <= usable

    fitting = [b for b in range(1, rows_needed + 1) if (b == 1 or b * row <= cap) and fits(b)]
    if not fitting:
        one = estimate(BatchPlan(data.mode, row, 1, 1))
        assert one is not None
        raise PlanRefused(
            f"one row of {row:,} tokens needs about {one.total_bytes / 1e9:.1f} GB, more than "
            f"{SAFETY:.0%} of what this process may use: "
            + _advice(
                config, longest, checkpointing_helps=not config.training.gradient_checkpointing
            )
        )
    accumulation = -(-rows_needed // max(fitting))
    # The fewest micro-batches that hold the step's rows, then rows spread evenly over them.
    micro = -(-rows_needed // accumulation)
    if accumulation == 1:
        reason = "the whole step in one pass"
    elif rows_needed * row > cap and max(fitting) * row <= cap < (max(fitting) + 1) * row:
        reason = f"larger micro-batches than {cap:,} tokens are no faster on {device}"
    else:
        reason = "the most that fits in memory"
    why.append(
        f"micro-batch: {micro} row(s) of {row:,} tokens x {accumulation} accumulated "
        f"(batch_size: auto: {reason})"
    )
    return BatchPlan(data.mode, row, micro, accumulation), why


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _estimate(
    config: TrainConfig,
    shape: ModelShape,
    data: DatasetSize,
    batch: BatchPlan,
    dtype: str,
    weights_dtype: str,
    checkpointing: bool | None,
    device: str,
) -> MemoryEstimate:
    method, settings = config.method, config.training
    targets = method.target_modules
    length = batch.row_length if batch.mode != "pad" else min(batch.row_length, data.longest)
    from ft_train_core.preference import is_preference

    if is_preference(config):
        # A pair's two sides share one row twice as long as a side (`job_batches`): the
        # forward pass holds both sides' activations.
        length *= 2
    tokens_in_rows = batch.micro_batch * length
    # Logits are computed at the trained positions only; a packed row is nearly full.
    share = data.trained_tokens / max(data.tokens, 1)
    return estimate_training_memory(
        shape,
        method=method.name if method.name in ("full", "lora", "dora", "qlora") else "lora",
        batch_size=batch.micro_batch,
        seq_len=length,
        dtype=dtype,
        weights_dtype=weights_dtype if method.name != "full" else None,
        lora_rank=method.rank,
        lora_targets=targets if isinstance(targets, str) else list(targets),
        quant_bits=method.quant_bits,
        gradient_checkpointing=settings.gradient_checkpointing
        if checkpointing is None
        else checkpointing,
        optimizer=settings.optimizer,
        lora_dropout=method.dropout,
        target_fraction=min(1.0, share * min(1.0, data.tokens / max(tokens_in_rows, 1)))
        if batch.mode == "pad"
        else share,
        attention_span=data.longest,
        # ft's torch trainer computes the loss a chunk of targets at a time (not compiled).
        logit_rows=None if device.startswith("mlx") or settings.compile else LOSS_CHUNK_ROWS,
    )


def _tokens_per_step(data: DatasetSize, batch: BatchPlan, processes: int) -> int:
    rows = batch.micro_batch * batch.accumulation * processes
    if batch.mode == "pad":
        return int(rows * float(data.lengths.mean()))
    return rows * batch.row_length


def _few_steps(config: TrainConfig, steps: int, per_step: int) -> str:
    settings = config.training
    fix = (
        "set training.tokens_per_step lower"
        if settings.batch_size == "auto"
        else "set training.batch_size: auto (ft then sizes the steps from the data), or a "
        "smaller batch_size or gradient_accumulation_steps"
    )
    return (
        f"only {steps} optimizer step(s) of about {per_step:,} tokens: too few to learn much "
        f"(aim for {FEW_STEPS} or more). To get more: {fix}, or raise training.epochs"
    )


def _too_big(
    config: TrainConfig,
    data: DatasetSize,
    batch: BatchPlan,
    peak: MemoryEstimate,
    budget: MemoryBudget,
    estimate: Any,
) -> str:
    parts = ", ".join(
        f"{name} {size / 1e9:.1f} GB"
        for name, size in sorted(peak.breakdown.items(), key=lambda item: -item[1])
        if size >= 0.05e9
    )
    head = (
        f"the run does not fit in memory: a micro-batch of {batch.micro_batch} row(s) of "
        f"{batch.row_length:,} tokens needs about {peak.total_bytes / 1e9:.1f} GB at the peak "
        f"({parts}), and this process may use {budget.limit_bytes / 1e9:.1f} GB "
        f"({budget.source}; ft keeps a plan under {SAFETY:.0%} of it). Change one of:"
    )
    options = [
        "training.batch_size: auto  (ft splits the micro-batch and accumulates gradients: "
        "the same tokens per optimizer step)"
    ]
    if batch.micro_batch > 1:
        smaller = BatchPlan(batch.mode, batch.row_length, 1, batch.accumulation * batch.micro_batch)
        options.append(
            f"training.batch_size: 1 and training.gradient_accumulation_steps: "
            f"{smaller.accumulation}  (about {estimate(smaller).total_bytes / 1e9:.1f} GB)"
        )
    if not config.training.gradient_checkpointing:
        options.append(
            f"training.gradient_checkpointing: true  (about "
            f"{estimate(batch, True).total_bytes / 1e9:.1f} GB, about 30% slower)"
        )
    if batch.row_length > max(data.longest, 1) and batch.mode == "pack":
        options.append(
            f"data.max_seq_length: {_round_up(max(data.longest, 64), 64)}  (the longest example)"
        )
    return head + "".join(f"\n  {option}" for option in options)


def _advice(config: TrainConfig, longest: int, *, checkpointing_helps: bool) -> str:
    advice = []
    if checkpointing_helps:
        advice.append("turn on training.gradient_checkpointing")
    advice.append(f"lower data.max_seq_length (the longest example has {longest:,} tokens)")
    if config.method.name == "full":
        advice.append("use method: lora")
    advice.append("or raise resources.max_memory_gb if more memory is free")
    return ", ".join(advice)


def _seconds(
    config: TrainConfig,
    shape: ModelShape,
    data: DatasetSize,
    steps: int,
    per_step: int,
    flops_per_second: float,
) -> float:
    from ft_models.compute import TRAINING_EFFICIENCY, training_flops_per_token
    from ft_models.memory import resolve_lora_targets

    method = config.method
    adapter_methods = ("lora", "dora", "qlora")
    targets = (
        resolve_lora_targets(shape, method.target_modules) if method.name in adapter_methods else []
    )
    flops = training_flops_per_token(
        shape,
        method="full" if method.name == "full" else "lora",
        target_fraction=data.trained_tokens / max(data.tokens, 1),
        gradient_checkpointing=config.training.gradient_checkpointing,
        lora_rank=method.rank,
        lora_targets=targets,
        attention_span=int(np.mean(data.lengths)) if len(data.lengths) else 512,
    )
    # Padding and packing gaps cost compute too: count the rows' tokens, not the data's.
    return steps * per_step * flops / (flops_per_second * TRAINING_EFFICIENCY)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def job_batches(
    job: Any,
    train_set: Any,
    eval_set: Any,
    *,
    device: str,
    precision: str,
    weights_dtype: str,
    processes: int = 1,
    **options: Any,
) -> tuple[BatchPlan, Batches, Batches | None, list[str]]:
    """What every trainer's setup does with a job's data: the batch plan (`ft train`'s,
    `job.plan`, else `batch_plan_for`'s, with what was decided), and the training and
    validation `Batches` it makes. Each global batch holds a micro-batch for every one of
    `processes`; validation rows are as long as its longest example. `options` go to
    `Batches` (`pad_id`, `pad_multiple`)."""
    plan, decided = (
        (job.plan, [])
        if job.plan
        else batch_plan_for(
            job,
            device=device,
            precision=precision,
            weights_dtype=weights_dtype,
            processes=processes,
        )
    )
    seed = job.config.training.seed
    from ft_train_core.preference import PairBatches, PairView, is_preference

    # Preference pairs: a pair's two sides share a row (ft_train_core.preference), so its rows
    # are twice as long as one side may be, and never shorter than the longest pair (the plan
    # sized them by the chosen sides, and a rejected side may be longer).
    pairs = is_preference(job.config)
    kind = PairBatches if pairs else Batches
    row_length = plan.row_length
    if pairs:
        row_length = max(2 * row_length, int(PairView(train_set).lengths.max(initial=0)))

    def batches(dataset: Any, row_length: int, shuffle: bool) -> Batches:
        return kind(
            dataset,
            batch_size=processes * plan.micro_batch,
            max_seq_length=row_length,
            mode=plan.mode,
            seed=seed,
            shuffle=shuffle,
            **options,
        )

    train = batches(train_set, row_length, True)
    evaluation = None
    if eval_set is not None and len(eval_set):
        lengths = PairView(eval_set).lengths if pairs else eval_set.lengths
        evaluation = batches(eval_set, max(row_length, int(lengths.max())), False)
    return plan, train, evaluation, decided
