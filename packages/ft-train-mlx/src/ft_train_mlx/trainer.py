"""MLXTrainer: ft's MLX backend, found by ft-runs through the `ft.trainers` entry point.

`train(job, emit, should_stop)` wires the pieces: device, precision and memory limits, the
model (mlx-lm's definition through `ft_models.load.load_mlx`) adapted for the method
(`methods.py`), batches from ft-data, the optimizer (`optim.py`), the saved state
(`state.py`), the process group (`distributed.py`), then runs `loop.run`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_models.checkpoint import read_manifest
from ft_models.load import load_mlx, read_config
from ft_runs.plan import batch_plan_for
from ft_runs.protocols import (  # declared by its consumer, ft-runs
    Capabilities,
    Placement,
    TrainResult,
)
from ft_runs.trainkit import fingerprint, plan
from ft_train_mlx import loop
from ft_train_mlx.distributed import world_from_env
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
from ft_train_mlx.state import (
    LoopState,
    compare_fingerprints,
    load_training_state,
    read_trainer_state,
    save_training_state,
)

Event = dict[str, Any]
GIB = 1 << 30
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def gpu_available() -> bool:
    return bool(mx.metal.is_available()) or bool(
        getattr(mx, "cuda", None) and mx.cuda.is_available()
    )


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

    def placement(self, config: Any) -> Placement:
        """The device, precision and base dtype `train` would use for `config` here."""
        device = _pick_device(config.resources.device)
        precision = _precision(config.training.precision, device)
        return Placement(
            device="mlx" if device == "gpu" else "mlx-cpu",
            precision=precision,
            weights_dtype=_load_dtype(config.model.dtype, precision),
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

        device = _pick_device(resources.device)
        precision = _precision(settings.precision, device)
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
            stack.enter_context(_on_device(device))
            stack.enter_context(_memory_limit(resources.max_memory_gb))
            if job.resume_from is not None:
                read_manifest(job.resume_from)  # refuses a broken checkpoint, saying what is wrong
            train_set = stack.enter_context(PreparedDataset(job.train_data))
            eval_set = (
                stack.enter_context(PreparedDataset(job.validation_data))
                if job.validation_data
                else None
            )
            dtype = _load_dtype(config.model.dtype, precision)
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
            # else made here the same way (ft_runs.plan); a resumed run keeps its own.
            batch, decided = (
                (job.plan, [])
                if job.plan
                else batch_plan_for(
                    job,
                    device="mlx" if device == "gpu" else "mlx-cpu",
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
            total_steps, total_micro = plan(batches, settings, batch.accumulation)
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


def checkpoint_layers(model: nn.Module) -> None:
    """Gradient checkpointing: each transformer block recomputes its activations in the
    backward pass (`mx.checkpoint`). Only these instances change (their class is swapped for a
    subclass), not every block of that type in the process.

    The recomputation runs the block's Python again, so dropout would draw new masks there and
    the gradient would not match the forward pass: each block seeds MLX's random state from a
    number drawn before it (itself seeded per micro-batch), and draws the same masks twice.
    """
    for layer in model.layers:
        base = type(layer)
        if getattr(base, "_ft_checkpointed", False):
            continue

        def call(
            self: nn.Module, x: mx.array, *args: Any, _base: type = base, **kwargs: Any
        ) -> Any:
            seed = int(mx.random.randint(0, 2**31 - 1, ()).item())

            def inner(params: Any, x: mx.array) -> mx.array:
                mx.random.seed(seed)
                self.update(params)
                return _base.__call__(self, x, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), x)

        layer.__class__ = type(
            f"Checkpointed{base.__name__}", (base,), {"__call__": call, "_ft_checkpointed": True}
        )


def _pick_device(requested: str) -> str:
    """`gpu` (Metal, or CUDA) or `cpu` for `resources.device`."""
    wanted = (requested or "auto").lower()
    if wanted in ("auto",):
        return "gpu" if gpu_available() else "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted in ("gpu", "mps", "metal", "cuda"):
        if not gpu_available():
            raise RuntimeError(
                f"resources.device: {requested}, but MLX sees no GPU on this machine: set "
                "resources.device: cpu (or auto)"
            )
        return "gpu"
    raise ValueError(f"resources.device: {requested!r} is not an MLX device: auto, gpu or cpu")


def _precision(requested: str, device: str) -> str:
    """`training.precision` on MLX's `device` (`gpu`/`cpu`), by ft-models' one rule."""
    from ft_models.device import pick_precision

    return pick_precision("mlx" if device == "gpu" else "mlx-cpu", requested).dtype


def _load_dtype(model_dtype: str, precision: str) -> str:
    """The dtype of the base weights: `model.dtype` when set, else the compute precision's."""
    return model_dtype if model_dtype != "auto" else DTYPES[precision]


@contextlib.contextmanager
def _on_device(device: str) -> Iterator[None]:
    before = mx.default_device()
    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    try:
        yield
    finally:
        mx.set_default_device(before)


@contextlib.contextmanager
def _memory_limit(max_memory_gb: float | None) -> Iterator[None]:
    """`resources.max_memory_gb` as MLX's memory limit (allocations above it wait for memory to
    be freed, or fail) and its cache limit (a quarter of it: freed buffers kept for reuse)."""
    if not max_memory_gb:
        yield
        return
    limit = int(max_memory_gb * GIB)
    old_limit = mx.set_memory_limit(limit)
    old_cache = mx.set_cache_limit(limit // 4)
    try:
        yield
    finally:
        mx.set_memory_limit(old_limit)
        mx.set_cache_limit(old_cache)
