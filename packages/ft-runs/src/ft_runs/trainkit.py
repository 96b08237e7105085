"""What the torch and MLX trainers share, with neither torch nor mlx: the run fingerprint that
decides whether a checkpoint may be resumed, the loop's counters as saved in
`trainer_state.json`, the learning-rate schedule, the run's plan (steps and micro-batches) and
epoch positions, and the job files that `ft_train_torch.launch` and `ft_train_mlx.launch` run.

Both trainers import these from here, so a checkpoint, a fingerprint or a schedule is the same
number for number whichever backend wrote it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ft_config import TrainConfig, TrainingConfig
from ft_config.structure import structure_config, unstructure_config
from ft_models.checkpoint import latest_valid_checkpoint

if TYPE_CHECKING:
    from ft_data.batches import Batches
    from ft_runs.protocols import Trainer, TrainJob

TRAINER_STATE = "trainer_state.json"

# Settings that may change between a run and its resume without changing what is learnt.
RESUME_NEUTRAL = (
    "logging.",
    "output.",
    "tune.",
    "profile",
    "training.save_every",
    "training.keep_last",
    "training.eval_every",
    "training.early_stopping_patience",
    "training.early_stopping_threshold",
    "training.max_steps",
    "training.backend",
    # Recomputing activations (torch restores the RNG for it) or compiling changes the memory
    # and speed of a step, not its result: a run stopped for memory resumes with it on.
    "training.gradient_checkpointing",
    "training.compile",
    "resources.device",
    "resources.max_memory_gb",
    "resources.hostfile",
    "resources.strategy",  # both write the same full-state checkpoints
    # Threads change only the order of floating-point sums: the run trains the same, though a
    # CPU run resumed with another thread count is no longer bit-identical to an unbroken one.
    "resources.num_threads",
    "model.name",  # where the weights came from; the model fingerprint below says what they are
    "model.revision",
    "data.train",
    "data.validation",
    "data.test",
)


@attrs.define
class LoopState:
    """The loop's own counters, saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches of the current step done (0 at every checkpoint)
    best_metric: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None  # folder name under the checkpoints folder
    evals_without_improvement: int = 0
    elapsed_s: float = 0.0


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The `trainer_state.json` of checkpoint folder `folder`."""
    return json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))


# -- fingerprints ---------------------------------------------------------------------------------


def fingerprint(
    config: TrainConfig, model_path: Path, train_data: Path, validation_data: Path | None
) -> dict[str, Any]:
    """What a run learns from: its settings (flattened, dotted keys), the base model and the data.

    The model is identified by its config.json and the names and sizes of its weight files (not
    their hashes: reading gigabytes at every checkpoint is too slow); a prepared dataset by its
    cache key (source bytes, tokenizer, template, options).
    """
    settings = flatten_settings(unstructure_config(config))
    model_files = {p.name: p.stat().st_size for p in sorted(Path(model_path).glob("*.safetensors"))}
    config_json = Path(model_path) / "config.json"
    model = {
        "config_sha256": hashlib.sha256(config_json.read_bytes()).hexdigest()
        if config_json.is_file()
        else None,
        "weights": model_files,
    }
    data = {"train": _dataset_id(train_data), "validation": _dataset_id(validation_data)}
    return {"settings": settings, "model": model, "data": data}


def _dataset_id(path: Path | None) -> str | None:
    if path is None:
        return None
    from ft_data.hdf5 import read_attrs

    attrs_ = read_attrs(path) or {}
    key = attrs_.get("cache_key") or attrs_.get("source_hash")
    if key:
        return str(key)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def flatten_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings mapping as dotted keys (`training.learning_rate`): what fingerprints,
    resume checks and `ft runs compare` compare."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(k, str) for k in value)
            and not prefix.endswith("columns")
        ):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_fingerprints(
    saved: dict[str, Any], current: dict[str, Any], *, neutral: tuple[str, ...] = RESUME_NEUTRAL
) -> list[str]:
    """The differences that make resuming unsafe, one sentence each (empty: compatible).

    `neutral`: the settings (dotted keys, or prefixes ending in a dot) allowed to differ."""
    problems = []
    before, after = saved.get("settings", {}), current.get("settings", {})
    for key in sorted(set(before) | set(after)):
        if key.startswith(neutral) or key in neutral:
            continue
        if before.get(key) != after.get(key):
            problems.append(f"{key} was {before.get(key)!r}, now {after.get(key)!r}")
    if saved.get("model") != current.get("model"):
        problems.append("the base model differs (config.json or weight files changed)")
    for split in ("train", "validation"):
        if saved.get("data", {}).get(split) != current.get("data", {}).get(split):
            problems.append(f"the {split} data differs (a different prepared dataset)")
    return problems


# -- learning-rate schedule -----------------------------------------------------------------------


def warmup_steps(settings: TrainingConfig, total_steps: int) -> int:
    """`warmup_steps` when set, else `warmup_ratio` of the steps (rounded up)."""
    if settings.warmup_steps is not None:
        return settings.warmup_steps
    return math.ceil(settings.warmup_ratio * total_steps)


def lr_factor(step: int, *, schedule: str, warmup: int, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based) as a share of the peak.

    Warmup rises linearly to the peak, reached at step `warmup`; then `constant` stays there,
    `linear` falls to 0 at `total`, `cosine` follows half a cosine to 0 at `total`.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {schedule!r}: constant, linear or cosine")


# -- the loop's plan ------------------------------------------------------------------------------


def plan(
    batches: Batches, settings: TrainingConfig, accumulation: int | None = None
) -> tuple[int, int | None]:
    """(optimizer steps, micro-batches) of a run: `epochs` (a fraction takes that share of the
    last epoch's batches), unless `max_steps` is set (then the data cycles: None).
    `accumulation`: micro-batches per step (default: `gradient_accumulation_steps`)."""
    accumulation = accumulation or settings.gradient_accumulation_steps
    if settings.max_steps is not None:
        return settings.max_steps, None
    whole = int(settings.epochs)
    micro = batches.steps(whole) + round(
        (settings.epochs - whole) * batches.batches_in_epoch(whole)
    )
    if micro == 0:
        raise ValueError("the training data gives no batch: add rows or lower training.batch_size")
    return -(-micro // accumulation), micro


def epoch_progress(batches: Batches, micro_done: int) -> float:
    """The epoch reached after `micro_done` micro-batches, with its done share as the fraction."""
    epoch, index = batches.position(micro_done)
    return epoch + index / max(1, batches.batches_in_epoch(epoch))


def epoch_ended(batches: Batches, micro_done: int) -> bool:
    """True when the micro-batch before `micro_done` was the last of its epoch."""
    epoch, index = batches.position(micro_done - 1)
    return index == batches.batches_in_epoch(epoch) - 1


def due(every: int | None, step: int, epoch_ended: bool) -> bool:
    """Whether an every-N-steps action (`eval_every`, `save_every`) is due after `step`: every
    `every` steps, or at each epoch's end when `every` is unset."""
    return step % every == 0 if every else epoch_ended


def record_evaluation(state: LoopState, eval_loss: float, settings: Any) -> tuple[bool, bool]:
    """Count an evaluation at `state.step` into `state` (best metric and step, patience), as
    `training.early_stopping_threshold` and `_patience` say; `(is_best, stop_early)`."""
    is_best = (
        state.best_metric is None
        or eval_loss < state.best_metric - settings.early_stopping_threshold
    )
    if is_best:
        state.best_metric, state.best_step = eval_loss, state.step
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    patience = settings.early_stopping_patience
    return is_best, patience is not None and state.evals_without_improvement >= patience


def perplexity(loss: float) -> float:
    """`exp(loss)`, or infinity where that overflows."""
    return math.exp(loss) if loss < 700 else math.inf


# -- job files ------------------------------------------------------------------------------------


def load_job(path: Path) -> TrainJob:
    """The TrainJob a job file describes (the JSON file the trainers' `launch` modules run)."""
    from ft_runs.protocols import TrainJob

    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    config, problems = structure_config(spec["config"])
    if config is None or problems:
        raise ValueError(f"{path}: invalid config: {problems}")
    run_dir = Path(spec["run_dir"])
    resume = spec.get("resume_from")
    if resume == "latest":
        found = latest_valid_checkpoint(run_dir / "checkpoints")
        resume = found[0] if found else None
    from ft_runs.batch_plan import BatchPlan

    return TrainJob(
        config=config,
        model_path=Path(spec["model_path"]),
        train_data=Path(spec["train_data"]),
        validation_data=Path(spec["validation_data"]) if spec.get("validation_data") else None,
        run_dir=run_dir,
        resume_from=Path(resume) if resume else None,
        plan=BatchPlan.from_dict(spec["plan"]) if spec.get("plan") else None,
    )


def run_job_file(
    args: list[str],
    *,
    module: str,
    trainer: Callable[[], Trainer],
    is_main: Callable[[], bool],
    with_metrics: bool = False,
) -> int:
    """`python -m <module> JOB.json` on one process of a launch: train the job, append every
    event to the job's `events` file and write `<run_dir>/result.json` (on the main process,
    `is_main()`, asked once the job is read); `with_metrics` adds the run's metrics to it.
    The job's `stop_file`, once it exists, asks the processes to checkpoint and stop."""
    if len(args) != 1:
        print(f"usage: python -m {module} JOB.json", file=sys.stderr)
        return 2
    job_file = Path(args[0])
    job = load_job(job_file)
    spec = json.loads(job_file.read_text(encoding="utf-8"))
    events = Path(spec["events"]) if spec.get("events") else None
    main_rank = is_main()

    def emit(event: dict[str, Any]) -> None:
        if events is not None and main_rank:
            with events.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")

    # `ft train` creates the stop file on Ctrl-C. Only rank 0's answer counts (the loops
    # broadcast it), so every process stops at the same step and checkpoints together.
    stop_file = Path(spec["stop_file"]) if spec.get("stop_file") else None

    def should_stop() -> bool:
        return main_rank and stop_file is not None and stop_file.exists()

    result = trainer().train(job, emit=emit, should_stop=should_stop)
    if main_rank:
        done: dict[str, Any] = {
            "reason": result.reason,
            "step": result.step,
            "adapter_path": str(result.adapter_path) if result.adapter_path else None,
        }
        if with_metrics:
            done["metrics"] = result.metrics
        (job.run_dir / "result.json").write_text(json.dumps(done), encoding="utf-8")
    return 0
