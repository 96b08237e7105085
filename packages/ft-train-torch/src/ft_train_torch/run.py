"""One training run of a job, set up in named steps: `TorchTrainer.train` calls them in order
and says why each comes where it does; each step is a method of `TorchRun` that sets up one
thing and keeps what it built for the steps after it and for the loop.

What the loop calls back into the run is here too: `gather` and `save` (a checkpoint's
contents, the mirror of `setup_state`). The loss is the trainer's (`trainer._Objective`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_models.checkpoint import read_manifest
from ft_train_core.batch_plan import BatchPlan
from ft_train_core.plan import job_batches
from ft_train_core.preference import PreferenceTotals, check_preference_data
from ft_train_core.protocol import StartEvent
from ft_train_core.samples import EvalSamples
from ft_train_core.schedule import run_length
from ft_train_core.state import compare_fingerprints, fingerprint, read_trainer_state
from ft_train_torch import distributed, host_memory, loop
from ft_train_torch.classification import label_names, pad_token_id
from ft_train_torch.device import (
    device_name,
    grad_scaler,
    load_dtype,
    pick_device,
    resolve_precision,
)
from ft_train_torch.fused import frozen_linears_to, fuse_lora
from ft_train_torch.methods import (
    PROMPT_METHODS,
    apply_method,
    check_method,
    count_parameters,
    load_base_model,
    load_weights,
    save_final,
    save_weights,
)
from ft_train_torch.optim import build_optimizer, build_scheduler
from ft_train_torch.samples import samples_function
from ft_train_torch.state import LoopState, load_training_state, save_training_state

Event = dict[str, Any]
Gathered = tuple[dict[str, torch.Tensor], dict[str, Any]]  # FSDP: whole weights, optimizer state

# Padded rows are as wide as their batch's longest example rounded up to this: fewer distinct
# shapes, fewer kernels (and their weight copies) that oneDNN caches per shape on the CPU.
PAD_MULTIPLE = 64


class TorchRun:
    """What `TorchTrainer.train`'s steps build for one job, in the order they build it."""

    # Set by the steps, in this order.
    fsdp: bool
    train_set: PreparedDataset
    eval_set: PreparedDataset | None
    samples: EvalSamples | None  # the validation prompts answered at each evaluation
    label_names: list[str] | None
    pad_id: int | None
    dtype: torch.dtype
    base: torch.nn.Module  # the transformers model
    model: torch.nn.Module  # the base adapted for the method (a peft model, or the base)
    trainable: int
    total: int
    batch: BatchPlan
    batches: Batches
    eval_batches: Batches | None
    wrapped: torch.nn.Module  # the model in DDP or FSDP (itself for one process)
    forward: Callable[..., Any]  # `wrapped`, compiled with `training.compile`
    optimizer: torch.optim.Optimizer
    total_steps: int
    total_micro: int | None  # None: `max_steps` decides, the data cycles
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    prints: dict[str, Any]
    state: LoopState
    offload: Callable[[], Any]

    def __init__(self, job: Any) -> None:
        """This process' device and the precision for `job`'s config, the method checked
        against them (QLoRA needs CUDA), and the task."""
        self.job, self.config = job, job.config
        self.settings, self.method = job.config.training, job.config.method
        self.resources = job.config.resources
        self.world = distributed.world_from_env()
        self.device = distributed.device_for(self.world, pick_device(self.resources.device))
        check_method(self.method.name, self.device)
        self.precision = resolve_precision(self.settings.precision, self.device)
        self.task = job.config.model.task
        self.classify = self.task == "sequence-classification"
        self.prompt = self.method.name in PROMPT_METHODS
        self.notes: list[Event] = []  # messages found while setting up, told right after `start`

    def note(self, level: str, text: str) -> None:
        self.notes.append({"type": "message", "level": level, "text": text})

    def setup_process_group(self, stack: contextlib.ExitStack) -> None:
        """Whether to shard with FSDP, the process group (none for one process), torch's
        threads, deterministic kernels and every seed; `stack` restores and shuts them down."""
        self.fsdp = distributed.use_fsdp(
            self.resources.strategy, self.method.name, self.world, self.note
        )
        distributed.init_process_group(self.world, self.device)
        if self.resources.num_threads:
            torch.set_num_threads(self.resources.num_threads)
        if self.device.type == "cpu":
            # Each step's activations reuse the last step's memory instead of faulting in new
            # pages (about 8-10% of a CPU LoRA step here, issue 24).
            host_memory.keep_freed_memory(stack)
        deterministic = torch.are_deterministic_algorithms_enabled()
        # Deterministic kernels where torch has a choice: a resumed CPU run must end bit-identical.
        torch.use_deterministic_algorithms(True, warn_only=True)
        # But not its NaN fill of every new tensor (`torch.empty`), a debugging aid for kernels
        # that read memory they never wrote: ~15% of a CPU LoRA step went to it (issue 24).
        fill = torch.utils.deterministic.fill_uninitialized_memory
        torch.utils.deterministic.fill_uninitialized_memory = False
        stack.callback(setattr, torch.utils.deterministic, "fill_uninitialized_memory", fill)
        torch.manual_seed(self.settings.seed)
        np.random.seed(self.settings.seed % 2**32)
        random.seed(self.settings.seed)
        stack.callback(torch.use_deterministic_algorithms, deterministic)
        stack.callback(distributed.shutdown, self.world)

    def setup_data(self, stack: contextlib.ExitStack) -> None:
        """The prepared datasets, open until `stack` closes; a classifier's classes and pad
        token; a note where packing was asked for and cannot apply."""
        job, packing = self.job, self.config.data.packing
        self.train_set = stack.enter_context(PreparedDataset(job.train_data))
        self.eval_set = (
            stack.enter_context(PreparedDataset(job.validation_data))
            if job.validation_data
            else None
        )
        check_preference_data(self.config, self.train_set, "training")
        if self.eval_set is not None:
            check_preference_data(self.config, self.eval_set, "validation")
        self.label_names = (
            label_names(self.train_set, job.train_data, self.config.model.num_labels)
            if self.classify
            else None
        )
        self.pad_id = pad_token_id(job.model_path, self.train_set) if self.classify else None
        self.samples = self._eval_samples()
        if packing and self.classify:
            self.note("info", "sequence classification takes one example a row: packing is off")
        elif packing and self.prompt:
            self.note(
                "info",
                f"method {self.method.name} adds virtual tokens to each row: packing is off, "
                "rows are padded",
            )

    def _eval_samples(self) -> EvalSamples | None:
        """The validation prompts answered at each evaluation (`training.eval_samples`), on
        the main process, which reports them; none under FSDP, whose forward pass needs
        every process."""
        if not self.world.is_main or self.settings.eval_samples <= 0:
            return None
        if self.fsdp:
            self.note("info", "training.eval_samples: no samples under FSDP")
            return None
        return EvalSamples.for_run(self.config, self.job.model_path, self.eval_set)

    def setup_model(self) -> None:
        """The base model on the device in its load dtype, with gradient checkpointing if
        asked, adapted for the method; its trainable and total parameter counts."""
        full = self.method.name == "full"
        self.dtype = load_dtype(self.config.model.dtype, self.device, full=full)
        self.base = load_base_model(
            self.job.model_path,
            self.config.model,
            self.method,
            self.device,
            self.dtype,
            label_names=self.label_names,
            pad_token_id=self.pad_id,
        )
        if self.settings.gradient_checkpointing:
            self.base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model = apply_method(self.base, self.method, self.task)
        # Plain LoRA layers compute their adapter as one addmm (ft_train_torch.fused).
        fuse_lora(self.model)
        # Under bf16/fp16 autocast a frozen float32 base is cast to it at every forward pass:
        # stored in that dtype once instead (the same products, half the memory). Not under
        # FSDP (its flat parameters take one dtype) nor for DoRA (it reads the base weight's
        # norm outside the matrix products), nor for a full fine-tune (nothing is frozen).
        cast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if (
            cast is not None
            and self.dtype == torch.float32
            and self.method.name not in ("full", "dora")
            and not self.fsdp
            and self.device.type in ("cpu", "cuda")
        ):
            frozen_linears_to(self.model, cast)
        self.trainable, self.total = count_parameters(self.model)

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
            weights_dtype=str(self.dtype).removeprefix("torch."),
            processes=self.world.size,
            pad_id=self.pad_id,
            pad_multiple=PAD_MULTIPLE,
        )
        for text in decided:
            self.note("info", text)

    def restore_weights(self) -> None:
        """A resumed run's trained weights, from its checkpoint."""
        if self.job.resume_from is not None:
            read_manifest(self.job.resume_from)  # refuses a broken checkpoint, saying what is wrong
            load_weights(self.model, Path(self.job.resume_from), self.method.name)

    def setup_parallel(self) -> None:
        """The model the loop trains: in DDP or FSDP across processes, compiled if asked."""
        self.wrapped = distributed.wrap(self.model, self.world, self.device, fsdp=self.fsdp)
        self.forward = torch.compile(self.wrapped) if self.settings.compile else self.wrapped

    def setup_optimizer(self) -> None:
        """The optimizer, the run's length in steps, the learning-rate schedule over it, and
        fp16's loss scaler."""
        settings = self.settings
        self.optimizer = build_optimizer(self.model.parameters(), settings)
        self.total_steps, self.total_micro = run_length(
            self.batches, settings, self.batch.accumulation
        )
        self.scheduler = build_scheduler(self.optimizer, settings, self.total_steps)
        self.scaler = grad_scaler(self.precision, self.device)

    def setup_state(self) -> None:
        """The run's fingerprint, saved with every checkpoint, and the loop's state: fresh, or
        a resumed checkpoint's (step, best, patience, every RNG) with the optimizer, scheduler
        and scaler state put back; a note for each setting that changed since."""
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
            Path(job.resume_from),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            load_optimizer_state=(
                (lambda whole: distributed.load_optimizer_state(self.model, self.optimizer, whole))
                if self.fsdp
                else None
            ),
        )

    def setup_offload(self) -> None:
        """`resources.activation_offloading`: saved activations kept in (pinned) CPU memory
        until the backward pass, on CUDA; a note elsewhere."""
        self.offload = contextlib.nullcontext
        if self.resources.activation_offloading:
            if self.device.type == "cuda":
                self.offload = lambda: torch.autograd.graph.save_on_cpu(pin_memory=True)
            else:
                self.note(
                    "warning",
                    f"resources.activation_offloading is for CUDA; ignored on {self.device.type}",
                )

    # -- checkpoints: what the loop calls to save one, and the final adapter -----------------

    def full_weights(self) -> dict[str, torch.Tensor]:
        """FSDP: every process sends its shards; rank 0 gets the whole (on the CPU)."""
        return distributed.full_weights(self.model, trainable_only=self.method.name != "full")

    def gather(self) -> Gathered:
        return self.full_weights(), distributed.full_optimizer_state(self.model, self.optimizer)

    def save(
        self,
        folder: Path,
        loop_state: LoopState,
        position: dict[str, int],
        gathered: Gathered | None,
    ) -> None:
        """A checkpoint's contents: the weights, and everything `setup_state` restores."""
        weights, optimizer_state = gathered if gathered is not None else (None, None)
        save_weights(self.model, folder, self.method.name, self.job.model_path, weights)
        save_training_state(
            folder,
            loop=loop_state,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            data_position=position,
            fingerprint=self.prints,
            optimizer_state=optimizer_state,
        )

    def save_final(self, outcome: loop.Outcome) -> Path | None:
        """The final adapter (or model) of a run that ended as planned, where the job says;
        None after an interruption or a NaN loss."""
        if outcome.reason not in ("completed", "max_steps", "early_stopping"):
            return None
        adapter = Path(self.job.adapter_dir)
        weights = self.full_weights() if self.fsdp else None
        if self.world.is_main:
            save_final(self.model, adapter, self.method.name, self.job.model_path, weights)
        distributed.barrier(self.world)
        return adapter

    # -- what the loop is given --------------------------------------------------------------

    def start_event(self) -> StartEvent:
        return {
            "type": "start",
            "total_steps": self.total_steps,
            "trainable_params": int(self.trainable),
            "total_params": int(self.total),
            "device": str(self.device),
            "dtype": self.precision,
            "resumed_from_step": self.state.step if self.job.resume_from is not None else None,
        }

    def loop_inputs(
        self,
        loss: loop.LossFn,
        count: loop.CountFn,
        score: loop.ScoreFn,
        totals: PreferenceTotals | None = None,
        cast: Callable[[], Any] = contextlib.nullcontext,
    ) -> loop.Loop:
        """What `loop.run` works with: what the steps built, `save`, and the functions that
        score a batch (`score` for a classifier only; `totals`, a preference objective's
        rewards, for its metrics); `cast`, the loss's autocast, for the evaluation samples."""
        return loop.Loop(
            model=self.wrapped,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            batches=self.batches,
            settings=self.settings,
            total_steps=self.total_steps,
            total_micro_batches=self.total_micro,
            accumulation=self.batch.accumulation,
            loss=loss,
            count=count,
            save=self.save,
            checkpoints_dir=self.job.checkpoints_dir,
            device=self.device,
            world=self.world,
            eval_batches=self.eval_batches,
            scaler=self.scaler,
            offload=self.offload,
            score=score if self.classify else None,
            gather=self.gather if self.fsdp else None,
            metrics=totals,
            samples=samples_function(
                self.model, self.base, self.samples, self.device, cast, cache=not self.prompt
            ),
        )
