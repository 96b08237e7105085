"""MLXTrainer: ft's MLX backend, found by ft-runs through the `ft.trainers` entry point.

`train(job, emit, should_stop)` reads as a list of named steps, each a method of `_MLXRun`
that sets up one thing: device, precision and memory limits (`device.py`), the data, mlx-lm's
model adapted for the method (`methods.py`), the batches, the saved weights, the optimizer
(`optim.py`) and the saved state (`state.py`); then `loop.run`, then the final adapter.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_models.checkpoint import read_manifest
from ft_models.load import load_mlx, read_config
from ft_train_core.batch_plan import BatchPlan
from ft_train_core.plan import job_batches
from ft_train_core.preference import OBJECTIVES, check_preference_data, is_preference
from ft_train_core.protocol import (
    Capabilities,
    ClassificationResult,
    Launch,
    LossResult,
    Placement,
    PreferenceResult,
    StartEvent,
    TrainResult,
)
from ft_train_core.samples import EvalSamples
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
from ft_train_mlx.preference import Preference
from ft_train_mlx.samples import samples_function
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
            objectives=OBJECTIVES,
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

    def evaluate_preference(
        self,
        model_path: Path,
        adapter: Path | None,
        dataset: Path,
        *,
        batch_size: int = 4,
        device: str = "auto",
    ) -> PreferenceResult:
        """Each preference pair's log-probability of its chosen and rejected answer under the
        model (with the adapter, or a full fine-tune's folder), on a prepared dataset of pairs."""
        from ft_train_mlx.evaluation import evaluate_preference

        return evaluate_preference(
            model_path, adapter, dataset, batch_size=batch_size, device=device
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
        # First what MLX cannot train (a method, a task, packing with learned positions), the
        # device and the precision: a config this machine cannot run fails before any work.
        run = _MLXRun(job, self.initial_adapter)
        with contextlib.ExitStack() as stack:  # undoes the steps' setup however the run ends
            # Seeds, the default device and memory limits before anything is allocated.
            run.setup_device(stack)
            # A broken checkpoint is refused before anything is loaded.
            run.check_checkpoint()
            run.setup_data(stack)
            run.setup_model()
            # The batches after the model: a plan made here reads the memory left (and held)
            # once the weights are loaded (ft_train_core.plan.memory_budget).
            run.setup_batches()
            # Full fine-tuning with DPO: the base's log-probabilities, before any saved
            # weights replace them (on resume they are read back from the run folder).
            run.setup_preference()
            run.restore_weights()
            # The peak memory of training, not of loading or probing: counted from here.
            run.reset_peak_memory()
            run.setup_optimizer()
            # After the optimizer exists: a checkpoint's state is loaded into it.
            run.setup_state()

            say = emit if run.world.is_main else (lambda event: None)
            say(run.start_event())
            for event in run.notes:  # what the steps found, told once `start` opened the run
                say(event)
            outcome = loop.run(run.loop_inputs(), run.state, emit=say, should_stop=should_stop)
            adapter = run.save_final(outcome)
            say(outcome.end_event(adapter))
            return TrainResult(
                reason=outcome.reason,
                step=outcome.step,
                adapter_path=adapter,
                best_checkpoint=outcome.best_checkpoint,
                metrics={
                    **outcome.metrics,
                    "peak_memory_bytes": float(mx.get_peak_memory()),
                    "active_memory_bytes": float(mx.get_active_memory()),
                },
            )


class _MLXRun:
    """What `MLXTrainer.train`'s steps build for one job, in the order they build it, and
    `save`, the checkpoints' contents, which the loop calls."""

    # Set by the steps, in this order.
    train_set: PreparedDataset
    eval_set: PreparedDataset | None
    samples: EvalSamples | None  # the validation prompts answered at each evaluation
    dtype: str
    model: nn.Module  # mlx-lm's model, adapted for the method in place
    paths: list[str]  # the adapted modules (none for full fine-tuning)
    trainable: int
    total: int
    batch: BatchPlan
    batches: Batches
    eval_batches: Batches | None
    optimizer: optim.Optimizer
    total_steps: int
    total_micro: int | None  # None: `max_steps` decides, the data cycles
    prints: dict[str, Any]
    state: LoopState
    preference: Preference | None  # DPO or ORPO (`method.objective`); None: supervised

    def __init__(self, job: Any, initial_adapter: Path | None) -> None:
        """The method and task checked for MLX, this process' place among the processes, the
        device and precision, and the model's type checked against packing."""
        self.job, self.config, self.initial_adapter = job, job.config, initial_adapter
        self.settings, self.method = job.config.training, job.config.method
        self.resources = job.config.resources
        check_method(self.method.name)
        if self.config.model.task != "causal-lm":
            raise ValueError(
                "model.task: sequence-classification is torch only (mlx-lm has causal LMs): "
                "set training.backend: torch"
            )
        self.world = world_from_env()
        self.notes: list[Event] = []  # messages found while setting up, told right after `start`
        self.device = pick_device(self.resources.device)
        self.precision = resolve_precision(self.settings.precision, self.device)
        self.model_type = str(read_config(job.model_path).get("model_type", ""))
        if self.config.data.packing and self.model_type in ABSOLUTE_POSITIONS:
            raise ValueError(
                f"data.packing with a {self.model_type} model: its learned position embeddings "
                "would see packed examples at the wrong positions on MLX. Set "
                "data.packing: false, or training.backend: torch"
            )

    def note(self, level: str, text: str) -> None:
        self.notes.append({"type": "message", "level": level, "text": text})

    def setup_device(self, stack: contextlib.ExitStack) -> None:
        """Every seed, then the device as MLX's default and `resources.max_memory_gb` as its
        memory limits, until `stack` closes."""
        mx.random.seed(self.settings.seed)
        np.random.seed(self.settings.seed % 2**32)
        random.seed(self.settings.seed)
        stack.enter_context(on_device(self.device))
        stack.enter_context(memory_limit(self.resources.max_memory_gb))

    def check_checkpoint(self) -> None:
        """A resumed run's checkpoint checked whole (its manifest's hashes)."""
        if self.job.resume_from is not None:
            read_manifest(self.job.resume_from)  # refuses a broken checkpoint, saying what is wrong

    def setup_data(self, stack: contextlib.ExitStack) -> None:
        """The prepared datasets, open until `stack` closes."""
        job = self.job
        self.train_set = stack.enter_context(PreparedDataset(job.train_data))
        self.eval_set = (
            stack.enter_context(PreparedDataset(job.validation_data))
            if job.validation_data
            else None
        )
        check_preference_data(self.config, self.train_set, "training")
        if self.eval_set is not None:
            check_preference_data(self.config, self.eval_set, "validation")
        # The validation prompts answered at each evaluation, on the process that reports.
        self.samples = (
            EvalSamples.for_run(self.config, job.model_path, self.eval_set)
            if self.world.is_main
            else None
        )

    def setup_model(self) -> None:
        """mlx-lm's model in its load dtype, adapted for the method, with gradient checkpointing
        if asked; its trainable and total parameter counts; the initial adapter's weights in
        place of the random ones (a fresh run only)."""
        settings = self.settings
        self.dtype = load_dtype(self.config.model.dtype, self.precision)
        self.model, _tokenizer = load_mlx(
            self.job.model_path,
            dtype=self.dtype,
            trust_remote_code=self.config.model.trust_remote_code,
        )
        self.paths = apply_method(self.model, self.method)
        if settings.gradient_checkpointing:
            checkpoint_layers(self.model)
            if settings.compile:
                self.note("warning", "training.compile is off with gradient_checkpointing on MLX")
        elif settings.compile and self.config.data.packing:
            self.note(
                "info",
                "training.compile applies to unpacked rows only on MLX: the examples of "
                "packed rows change shape at every batch (see ft_train_mlx.loop)",
            )
        self.trainable, self.total = count_parameters(self.model)
        if self.initial_adapter is not None and self.job.resume_from is None:
            if self.method.name == "full":
                raise ValueError("initial_adapter is for adapter methods, not method: full")
            load_peft_tensors(self.model, self.initial_adapter, self.model_type)

    def setup_batches(self) -> None:
        """The batch plan, and the training and validation batches it makes: each global
        batch holds a micro-batch for every process."""
        # Planned (and checked against memory) by `ft train`, else made here the same way
        # (ft_train_core.plan); a resumed run keeps its own.
        self.batch, self.batches, self.eval_batches, decided = job_batches(
            self.job,
            self.train_set,
            self.eval_set,
            device=device_name(self.device),
            precision=self.precision,
            weights_dtype=self.dtype,
            processes=self.world.size,
        )
        for text in decided:
            self.note("info", text)

    def setup_preference(self) -> None:
        """A preference objective (`method.objective` dpo or orpo) over the model; for full
        fine-tuning with DPO, the reference computed and stored (or read back)."""
        self.preference = None
        if not is_preference(self.config):
            return
        self.preference = Preference(self.model, self.method, self.paths)
        if self.method.objective == "dpo" and self.method.name == "full":
            told = self.preference.store_reference(
                self.job.run_dir,
                [
                    (True, self.train_set, self.batches),  # type: ignore[list-item]
                    (False, self.eval_set, self.eval_batches),  # type: ignore[list-item]
                ],
                resumed=self.job.resume_from is not None,
                is_main=self.world.is_main,
            )
            for text in told:
                self.note("info", text)

    def restore_weights(self) -> None:
        """A resumed run's trained weights, from its checkpoint."""
        if self.job.resume_from is not None:
            load_weights(self.model, Path(self.job.resume_from), self.method, self.model_type)

    def reset_peak_memory(self) -> None:
        """Every weight computed (MLX is lazy), then MLX's peak memory counter reset."""
        mx.eval(self.model.parameters())
        mx.reset_peak_memory()

    def setup_optimizer(self) -> None:
        """The optimizer (its learning rate is set by the loop at every step) and the run's
        length in steps."""
        self.optimizer = build_optimizer(self.settings)
        self.total_steps, self.total_micro = run_length(
            self.batches, self.settings, self.batch.accumulation
        )

    def setup_state(self) -> None:
        """The run's fingerprint, saved with every checkpoint, and the loop's state: fresh, or
        a resumed checkpoint's (step, best, patience, host RNGs) with the optimizer's state
        put back; a note for each setting that changed since."""
        job = self.job
        self.prints = fingerprint(self.config, job.model_path, job.train_data, job.validation_data)
        self.prints["batch_plan"] = self.batch.to_dict()
        self.state = LoopState()
        if job.resume_from is None:
            return
        saved_prints = read_trainer_state(job.resume_from)["fingerprint"]
        for difference in compare_fingerprints(saved_prints, self.prints):
            self.note("warning", f"resuming with a change: {difference}")
        self.state = load_training_state(
            Path(job.resume_from), optimizer=self.optimizer, model=self.model
        )

    def save(self, folder: Path, loop_state: LoopState, position: dict[str, int]) -> None:
        """A checkpoint's contents: the weights, and everything `setup_state` restores."""
        job = self.job
        save_weights(self.model, folder, self.method, self.paths, job.model_path, self.model_type)
        save_training_state(
            folder,
            loop=loop_state,
            optimizer=self.optimizer,
            data_position=position,
            fingerprint=self.prints,
        )

    def start_event(self) -> StartEvent:
        return {
            "type": "start",
            "total_steps": self.total_steps,
            "trainable_params": int(self.trainable),
            "total_params": int(self.total),
            "device": f"mlx:{self.device}",
            "dtype": self.precision,
            "resumed_from_step": self.state.step if self.job.resume_from is not None else None,
        }

    def loop_inputs(self) -> loop.Loop:
        """What `loop.run` works with: what the steps built, and `save`."""
        settings = self.settings
        return loop.Loop(
            model=self.model,
            optimizer=self.optimizer,
            batches=self.batches,
            settings=settings,
            total_steps=self.total_steps,
            total_micro_batches=self.total_micro,
            accumulation=self.batch.accumulation,
            save=self.save,
            checkpoints_dir=self.job.checkpoints_dir,
            world=self.world,
            eval_batches=self.eval_batches,
            # gradient checkpointing reads a seed in Python at every block (see
            # checkpoint_layers), which a compiled function cannot
            compile=settings.compile and not settings.gradient_checkpointing,
            preference=self.preference,
            samples=samples_function(self.model, self.samples),
        )

    def save_final(self, outcome: loop.Outcome) -> Path | None:
        """The final adapter (or model) of a run that ended as planned, where the job says;
        None after an interruption or a NaN loss."""
        if outcome.reason not in ("completed", "max_steps", "early_stopping"):
            return None
        job, adapter = self.job, Path(self.job.adapter_dir)
        if self.world.is_main:
            save_final(
                self.model, adapter, self.method, self.paths, job.model_path, self.model_type
            )
        self.world.barrier()
        return adapter
