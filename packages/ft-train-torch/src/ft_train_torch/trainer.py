"""TorchTrainer: ft's PyTorch backend, found by ft-runs through the `ft.trainers` entry point.

`train(job, emit, should_stop)` wires the pieces: device and precision (`device.py`), the model
of the method (`methods.py`), batches from ft-data, optimizer and schedule (`optim.py`), the
saved state (`state.py`), the process group (`distributed.py`), then runs `loop.run`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_models.checkpoint import read_manifest
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
from ft_train_torch import distributed, loop
from ft_train_torch.classification import label_names, pad_token_id
from ft_train_torch.device import (
    autocast,
    device_name,
    grad_scaler,
    load_dtype,
    pick_device,
    resolve_precision,
)
from ft_train_torch.distributed import SHARDED_METHODS
from ft_train_torch.methods import (
    METHODS,
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
from ft_train_torch.packing import (
    OutputAtTargets,
    causal_lm_loss,
    classification_correct,
    classification_loss,
    model_inputs,
    selected_lm_loss,
    trained_positions,
    trained_tokens,
)
from ft_train_torch.state import LoopState, load_training_state, save_training_state

Event = dict[str, Any]

# Padded rows are as wide as their batch's longest example rounded up to this: fewer distinct
# shapes, fewer kernels (and their weight copies) that oneDNN caches per shape on the CPU.
PAD_MULTIPLE = 64


class TorchTrainer:
    """The PyTorch trainer: LoRA, DoRA, QLoRA (CUDA), full, prefix tuning and P-tuning on
    transformers models; data parallel under torchrun."""

    name = "torch"

    def capabilities(self) -> Capabilities:
        devices = ["cpu"]
        if torch.cuda.is_available():
            devices.insert(0, "cuda")
        if torch.backends.mps.is_available():
            devices.insert(0, "mps")
        cuda = torch.cuda.is_available()
        has_bnb = importlib.util.find_spec("bitsandbytes") is not None
        methods = tuple(m for m in METHODS if m != "qlora" or (cuda and has_bnb))
        dtypes = ("fp32", "bf16", *(("fp16",) if cuda else ()))
        notes = () if "qlora" in methods else ("qlora needs an NVIDIA GPU with bitsandbytes",)
        return Capabilities(
            backend="torch",
            methods=methods,
            devices=tuple(devices),
            dtypes=dtypes,
            distributed=True,
            notes=notes,
            sharded_methods=SHARDED_METHODS,
            tasks=("causal-lm", "sequence-classification"),
        )

    def launch_command(self, job_file: Path, launch: Launch) -> list[str]:
        """torchrun (`torch.distributed.run`) starting `launch.nproc` processes on this node,
        each running the job file (`ft_train_torch.launch`)."""
        import sys

        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={launch.nproc}",
            f"--nnodes={launch.nnodes}",
            f"--node-rank={launch.node_rank}",
            f"--master-addr={launch.master_addr}",
            f"--master-port={launch.master_port}",
            "-m",
            "ft_train_torch.launch",
            str(job_file),
        ]

    def placement(self, config: Any) -> Placement:
        """The device, precision and base dtype `train` would use for `config` here."""
        device = pick_device(config.resources.device)
        dtype = load_dtype(config.model.dtype, device, full=config.method.name == "full")
        return Placement(
            device=device_name(device),
            precision=resolve_precision(config.training.precision, device),
            weights_dtype=str(dtype).removeprefix("torch."),
        )

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
        """Validation loss and perplexity of the model (with the adapter, or a full fine-tune's
        folder) on a prepared dataset, as the trainer's `eval` events compute them."""
        from ft_train_torch.evaluation import evaluate_loss, load_for_eval

        model = load_for_eval(model_path, adapter, device=device)
        return evaluate_loss(model, dataset, batch_size=batch_size, max_seq_length=max_seq_length)

    def evaluate_classification(
        self,
        model_path: Path,
        adapter: Path | None,
        dataset: Path,
        *,
        batch_size: int = 8,
        device: str = "auto",
    ) -> ClassificationResult:
        """A sequence classifier's mean loss per example, and each example's predicted and
        true class by name (`ClassificationResult`), on a prepared dataset with labels."""
        from ft_train_torch.evaluation import evaluate_classification, load_for_eval

        model = load_for_eval(model_path, adapter, device=device, task="sequence-classification")
        return evaluate_classification(model, dataset, batch_size=batch_size)

    def train(
        self, job: Any, emit: Callable[[Event], None], should_stop: Callable[[], bool]
    ) -> TrainResult:
        config = job.config
        settings, method, resources = config.training, config.method, config.resources
        world = distributed.world_from_env()
        device = distributed.device_for(world, pick_device(resources.device))
        check_method(method.name, device)
        precision = resolve_precision(settings.precision, device)
        task = config.model.task
        classify = task == "sequence-classification"
        say = emit if world.is_main else (lambda event: None)
        notes: list[Event] = []  # messages found while setting up, told right after `start`

        def note(level: str, text: str) -> None:
            notes.append({"type": "message", "level": level, "text": text})

        fsdp = distributed.use_fsdp(resources.strategy, method.name, world, note)
        distributed.init_process_group(world, device)
        if resources.num_threads:
            torch.set_num_threads(resources.num_threads)
        deterministic = torch.are_deterministic_algorithms_enabled()
        # Deterministic kernels where torch has a choice: a resumed CPU run must end bit-identical.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(settings.seed)
        np.random.seed(settings.seed % 2**32)
        random.seed(settings.seed)
        with contextlib.ExitStack() as stack:
            stack.callback(torch.use_deterministic_algorithms, deterministic)
            stack.callback(distributed.shutdown, world)
            train_set = stack.enter_context(PreparedDataset(job.train_data))
            eval_set = (
                stack.enter_context(PreparedDataset(job.validation_data))
                if job.validation_data
                else None
            )
            prompt = method.name in PROMPT_METHODS
            names = label_names(train_set, job.train_data) if classify else None
            pad_id = pad_token_id(job.model_path, train_set) if classify else None
            if config.data.packing and classify:
                note("info", "sequence classification takes one example a row: packing is off")
            elif config.data.packing and prompt:
                note(
                    "info",
                    f"method {method.name} adds virtual tokens to each row: packing is off, rows are padded",
                )
            dtype = load_dtype(config.model.dtype, device, full=method.name == "full")
            base = load_base_model(
                job.model_path,
                config.model,
                method,
                device,
                dtype,
                label_names=names,
                pad_token_id=pad_id,
            )
            if settings.gradient_checkpointing:
                base.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            model = apply_method(base, method, task)
            trainable, total = count_parameters(model)
            # How the data is batched: planned (and checked against memory) by `ft train`,
            # else made here the same way (ft_train_core.plan); a resumed run keeps its own.
            batch, decided = (
                (job.plan, [])
                if job.plan
                else batch_plan_for(
                    job,
                    device=device_name(device),
                    precision=precision,
                    weights_dtype=str(dtype).removeprefix("torch."),
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
                pad_id=pad_id,
                pad_multiple=PAD_MULTIPLE,
            )
            eval_batches = (
                Batches(
                    eval_set,
                    batch_size=rows,
                    max_seq_length=max(batch.row_length, int(eval_set.lengths.max())),
                    mode=batch.mode,
                    seed=settings.seed,
                    shuffle=False,
                    pad_id=pad_id,
                    pad_multiple=PAD_MULTIPLE,
                )
                if eval_set is not None and len(eval_set)
                else None
            )

            if job.resume_from is not None:
                read_manifest(job.resume_from)  # refuses a broken checkpoint, saying what is wrong
                load_weights(model, Path(job.resume_from), method.name)
            wrapped = distributed.wrap(model, world, device, fsdp=fsdp)
            forward = torch.compile(wrapped) if settings.compile else wrapped

            optimizer = build_optimizer(model.parameters(), settings)
            total_steps, total_micro = run_length(batches, settings, batch.accumulation)
            scheduler = build_scheduler(optimizer, settings, total_steps)
            scaler = grad_scaler(precision, device)
            prints = fingerprint(config, job.model_path, job.train_data, job.validation_data)
            prints["batch_plan"] = batch.to_dict()
            state = LoopState()
            if job.resume_from is not None:
                for difference in compare_fingerprints(
                    read_trainer_state(job.resume_from)["fingerprint"], prints
                ):
                    note("warning", f"resuming with a change: {difference}")
                state = load_training_state(
                    Path(job.resume_from),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    load_optimizer_state=(
                        (lambda saved: distributed.load_optimizer_state(model, optimizer, saved))
                        if fsdp
                        else None
                    ),
                )

            cast = autocast(precision, device)

            def logits_of(module: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
                inputs = model_inputs(batch, device, prompt_learning=prompt, task=task)
                with cast():
                    return (forward if module is wrapped else module)(**inputs).logits

            # Logits only where there are targets (not for prompt-learning methods, whose
            # virtual tokens shift the positions).
            output = None if classify or prompt else OutputAtTargets(base)
            if output is not None:
                stack.callback(output.remove)

            def loss(module: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
                if classify:
                    return classification_loss(logits_of(module, batch), batch)
                if output is None:
                    return causal_lm_loss(logits_of(module, batch), batch)
                with output.at(trained_positions(batch), device):
                    return selected_lm_loss(logits_of(module, batch), batch)

            def score(
                module: torch.nn.Module, batch: dict[str, np.ndarray]
            ) -> tuple[torch.Tensor, int]:
                logits = logits_of(module, batch)
                return classification_loss(logits, batch), classification_correct(logits, batch)

            def weights_of_shards() -> dict[str, torch.Tensor]:
                # FSDP: every process sends its shards; rank 0 gets the whole (on the CPU).
                return distributed.full_weights(model, trainable_only=method.name != "full")

            def gather() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
                return weights_of_shards(), distributed.full_optimizer_state(model, optimizer)

            def save(
                folder: Path,
                loop_state: LoopState,
                position: dict[str, int],
                gathered: tuple[dict[str, torch.Tensor], dict[str, Any]] | None,
            ) -> None:
                weights, optimizer_state = gathered if gathered is not None else (None, None)
                save_weights(model, folder, method.name, job.model_path, weights)
                save_training_state(
                    folder,
                    loop=loop_state,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    data_position=position,
                    fingerprint=prints,
                    optimizer_state=optimizer_state,
                )

            offload: Callable[[], Any] = contextlib.nullcontext
            if resources.activation_offloading:
                if device.type == "cuda":
                    offload = lambda: torch.autograd.graph.save_on_cpu(pin_memory=True)  # noqa: E731
                else:
                    note(
                        "warning",
                        f"resources.activation_offloading is for CUDA; ignored on {device.type}",
                    )

            say(
                {
                    "type": "start",
                    "total_steps": total_steps,
                    "trainable_params": int(trainable),
                    "total_params": int(total),
                    "device": str(device),
                    "dtype": precision,
                    "resumed_from_step": state.step if job.resume_from is not None else None,
                }
            )
            for event in notes:
                say(event)
            outcome = loop.run(
                loop.Loop(
                    model=wrapped,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    batches=batches,
                    settings=settings,
                    total_steps=total_steps,
                    total_micro_batches=total_micro,
                    accumulation=batch.accumulation,
                    loss=loss,
                    count=lambda batch: trained_tokens(batch, task),
                    save=save,
                    checkpoints_dir=job.checkpoints_dir,
                    device=device,
                    world=world,
                    eval_batches=eval_batches,
                    scaler=scaler,
                    offload=offload,
                    score=score if classify else None,
                    gather=gather if fsdp else None,
                ),
                state,
                emit=say,
                should_stop=should_stop,
            )
            adapter: Path | None = None
            if outcome.reason in ("completed", "max_steps", "early_stopping"):
                adapter = Path(job.adapter_dir)
                weights = weights_of_shards() if fsdp else None
                if world.is_main:
                    save_final(model, adapter, method.name, job.model_path, weights)
                distributed.barrier(world)
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
            return TrainResult(
                reason=outcome.reason,
                step=outcome.step,
                adapter_path=adapter,
                best_checkpoint=outcome.best_checkpoint,
                metrics=outcome.metrics,
            )


def check_resume_compatible(checkpoint: Path, job: Any) -> list[str]:
    """How resuming `job` from `checkpoint` would differ from the run that wrote it: changed
    settings (besides logging, output, checkpointing and stopping ones), another base model,
    other data. Empty when it is safe; the caller decides whether to refuse (unless forced)."""
    saved = read_trainer_state(checkpoint)["fingerprint"]
    current = fingerprint(job.config, job.model_path, job.train_data, job.validation_data)
    return compare_fingerprints(saved, current)
