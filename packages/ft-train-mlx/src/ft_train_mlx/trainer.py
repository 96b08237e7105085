"""MLXTrainer: ft's MLX backend, found by ft-runs through the `ft.trainers` entry point.

`train(job, emit, should_stop)` wires the pieces: device, precision and memory limits, the
model (mlx-lm's definition through `ft_models.load.load_mlx`) adapted for the method
(`methods.py`), batches from ft-data, the optimizer (`optim.py`), the saved state
(`state.py`), the process group (`distributed.py`), then runs `loop.run`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_models.checkpoint import read_manifest
from ft_models.load import load_mlx, read_config
from ft_train_core.plan import batch_plan_for
from ft_train_core.protocol import (
    Capabilities,
    ClassificationResult,
    Launch,
    LossResult,
    Placement,
    TrainResult,
)
from ft_train_core.schedule import run_length
from ft_train_core.state import compare_fingerprints, fingerprint, read_trainer_state
from ft_train_mlx import loop
from ft_train_mlx.device import (
    device_name,
    gpu_available,
    load_dtype,
    memory_limit,
    on_device,
    pick_device,
    resolve_precision,
)
from ft_train_mlx.distributed import world_from_env
from ft_train_mlx.gradient_checkpointing import checkpoint_layers
from ft_train_mlx.methods import (
    METHODS,
    apply_method,
    check_method,
    count_parameters,
    load_peft_tensors,
    load_weights,
    save_final,
    save_weights,
)
from ft_train_mlx.optim import build_optimizer
from ft_train_mlx.packing import ABSOLUTE_POSITIONS
from ft_train_mlx.state import LoopState, load_training_state, save_training_state

Event = dict[str, Any]


class MLXTrainer:
    """The MLX trainer: LoRA, DoRA, QLoRA (MLX-quantized base) and full fine-tuning on mlx-lm
    models; data parallel under `mlx.launch`."""

    name = "mlx"

    def __init__(self, initial_adapter: Path | None = None) -> None:
        """`initial_adapter`: a PEFT-layout adapter folder (LoRA/DoRA, same targets and rank)
        whose weights replace the random initial ones: to continue from an adapter trained
        elsewhere, or to start exactly where a torch run starts."""
        self.initial_adapter = Path(initial_adapter) if initial_adapter else None

    def capabilities(self) -> Capabilities:
        gpu = gpu_available()
        return Capabilities(
            backend="mlx",
            methods=METHODS,
            devices=("gpu", "cpu") if gpu else ("cpu",),
            dtypes=("fp32", "bf16", "fp16"),
            distributed=True,
            notes=()
            if gpu
            else ("MLX runs on the CPU here (mlx[cpu]): correct but slow; see docs/mlx.md",),
        )

    def launch_command(self, job_file: Path, launch: Launch) -> list[str]:
        """`mlx.launch` over `launch.nproc` local processes (ring backend), or the hosts of
        `launch.hostfile` (several Macs)."""
        from ft_train_mlx.launch import launch_argv

        return launch_argv(job_file, launch.nproc, launch.hostfile)

    def evaluate_loss(
        self,
        model_path: Path,
        adapter: Path | None,
        dataset: Path,
        *,
        max_seq_length: int = 2048,
        batch_size: int = 4,
        device: str = "auto",
    ) -> LossResult:
        """Validation loss and perplexity of the model (with the adapter, or a full
        fine-tune's folder) on a prepared dataset, as the trainer's `eval` events compute them."""
        from ft_train_mlx.evaluation import evaluate_loss

        return evaluate_loss(
            model_path,
            adapter,
            dataset,
            max_seq_length=max_seq_length,
            batch_size=batch_size,
            device=device,
        )

    def evaluate_classification(
        self, model_path: Path, adapter: Path | None, dataset: Path, **options: Any
    ) -> ClassificationResult:
        raise ValueError(
            "sequence classification is torch only (mlx-lm has causal LMs): install "
            "ft-train-torch to evaluate a classifier"
        )

    def placement(self, config: Any) -> Placement:
        """The device, precision and base dtype `train` would use for `config` here."""
        device = pick_device(config.resources.device)
        precision = resolve_precision(config.training.precision, device)
        return Placement(
            device=device_name(device),
            precision=precision,
            weights_dtype=load_dtype(config.model.dtype, precision),
        )

    def train(
        self, job: Any, emit: Callable[[Event], None], should_stop: Callable[[], bool]
    ) -> TrainResult:
        config = job.config
        settings, method, resources = config.training, config.method, config.resources
        check_method(method.name)
        if config.model.task != "causal-lm":
            raise ValueError(
                "model.task: sequence-classification is torch only (mlx-lm has causal LMs): "
                "set training.backend: torch"
            )
        world = world_from_env()
        say = emit if world.is_main else (lambda event: None)
        notes: list[Event] = []

        def note(level: str, text: str) -> None:
            notes.append({"type": "message", "level": level, "text": text})

        device = pick_device(resources.device)
        precision = resolve_precision(settings.precision, device)
        model_type = str(read_config(job.model_path).get("model_type", ""))
        if config.data.packing and model_type in ABSOLUTE_POSITIONS:
            raise ValueError(
                f"data.packing with a {model_type} model: its learned position embeddings "
                "would see packed examples at the wrong positions on MLX. Set "
                "data.packing: false, or training.backend: torch"
            )
        mx.random.seed(settings.seed)
        np.random.seed(settings.seed % 2**32)
        random.seed(settings.seed)
        with contextlib.ExitStack() as stack:
            stack.enter_context(on_device(device))
            stack.enter_context(memory_limit(resources.max_memory_gb))
            if job.resume_from is not None:
                read_manifest(job.resume_from)  # refuses a broken checkpoint, saying what is wrong
            train_set = stack.enter_context(PreparedDataset(job.train_data))
            eval_set = (
                stack.enter_context(PreparedDataset(job.validation_data))
                if job.validation_data
                else None
            )
            dtype = load_dtype(config.model.dtype, precision)
            model, _tokenizer = load_mlx(
                job.model_path, dtype=dtype, trust_remote_code=config.model.trust_remote_code
            )
            paths = apply_method(model, method)
            if settings.gradient_checkpointing:
                checkpoint_layers(model)
                if settings.compile:
                    note("warning", "training.compile is off with gradient_checkpointing on MLX")
            elif settings.compile and config.data.packing:
                note(
                    "info",
                    "training.compile applies to unpacked rows only on MLX: the examples of "
                    "packed rows change shape at every batch (see ft_train_mlx.loop)",
                )
            trainable, total = count_parameters(model)
            if self.initial_adapter is not None and job.resume_from is None:
                if method.name == "full":
                    raise ValueError("initial_adapter is for adapter methods, not method: full")
                load_peft_tensors(model, self.initial_adapter, model_type)
            # How the data is batched: planned (and checked against memory) by `ft train`,
            # else made here the same way (ft_train_core.plan); a resumed run keeps its own.
            batch, decided = (
                (job.plan, [])
                if job.plan
                else batch_plan_for(
                    job,
                    device=device_name(device),
                    precision=precision,
                    weights_dtype=dtype,
                    processes=world.size,
                )
            )
            for text in decided:
                note("info", text)
            rows = world.size * batch.micro_batch
            batches = Batches(
                train_set,
                batch_size=rows,
                max_seq_length=batch.row_length,
                mode=batch.mode,
                seed=settings.seed,
            )
            eval_batches = (
                Batches(
                    eval_set,
                    batch_size=rows,
                    max_seq_length=max(batch.row_length, int(eval_set.lengths.max())),
                    mode=batch.mode,
                    seed=settings.seed,
                    shuffle=False,
                )
                if eval_set is not None and len(eval_set)
                else None
            )

            if job.resume_from is not None:
                load_weights(model, Path(job.resume_from), method, model_type)
            mx.eval(model.parameters())
            mx.reset_peak_memory()  # the peak of training, not of loading or probing

            optimizer = build_optimizer(settings)
            total_steps, total_micro = run_length(batches, settings, batch.accumulation)
            prints = fingerprint(config, job.model_path, job.train_data, job.validation_data)
            prints["batch_plan"] = batch.to_dict()
            state = LoopState()
            if job.resume_from is not None:
                for difference in compare_fingerprints(
                    read_trainer_state(job.resume_from)["fingerprint"], prints
                ):
                    note("warning", f"resuming with a change: {difference}")
                state = load_training_state(Path(job.resume_from), optimizer=optimizer, model=model)

            def save(folder: Path, loop_state: LoopState, position: dict[str, int]) -> None:
                save_weights(model, folder, method, paths, job.model_path, model_type)
                save_training_state(
                    folder,
                    loop=loop_state,
                    optimizer=optimizer,
                    data_position=position,
                    fingerprint=prints,
                )

            say(
                {
                    "type": "start",
                    "total_steps": total_steps,
                    "trainable_params": int(trainable),
                    "total_params": int(total),
                    "device": f"mlx:{device}",
                    "dtype": precision,
                    "resumed_from_step": state.step if job.resume_from is not None else None,
                }
            )
            for event in notes:
                say(event)
            outcome = loop.run(
                loop.Loop(
                    model=model,
                    optimizer=optimizer,
                    batches=batches,
                    settings=settings,
                    total_steps=total_steps,
                    total_micro_batches=total_micro,
                    accumulation=batch.accumulation,
                    save=save,
                    checkpoints_dir=job.checkpoints_dir,
                    world=world,
                    eval_batches=eval_batches,
                    # gradient checkpointing reads a seed in Python at every block (see
                    # checkpoint_layers), which a compiled function cannot
                    compile=settings.compile and not settings.gradient_checkpointing,
                ),
                state,
                emit=say,
                should_stop=should_stop,
            )
            adapter: Path | None = None
            if outcome.reason in ("completed", "max_steps", "early_stopping"):
                adapter = Path(job.adapter_dir)
                if world.is_main:
                    save_final(model, adapter, method, paths, job.model_path, model_type)
                world.barrier()
            say(
                {
                    "type": "end",
                    "step": outcome.step,
                    "reason": outcome.reason,
                    "adapter_path": str(adapter) if adapter else None,
                    "best_checkpoint": str(outcome.best_checkpoint)
                    if outcome.best_checkpoint
                    else None,
                }
            )
            metrics = {
                **outcome.metrics,
                "peak_memory_bytes": float(mx.get_peak_memory()),
                "active_memory_bytes": float(mx.get_active_memory()),
            }
            return TrainResult(
                reason=outcome.reason,
                step=outcome.step,
                adapter_path=adapter,
                best_checkpoint=outcome.best_checkpoint,
                metrics=metrics,
            )


def check_resume_compatible(checkpoint: Path, job: Any) -> list[str]:
    """How resuming `job` from `checkpoint` would differ from the run that wrote it (empty when
    it is safe); the caller decides whether to refuse."""
    saved = read_trainer_state(checkpoint)["fingerprint"]
    current = fingerprint(job.config, job.model_path, job.train_data, job.validation_data)
    return compare_fingerprints(saved, current)
