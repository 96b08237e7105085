"""TorchTrainer: ft's PyTorch backend, found by ft-runs through the `ft.trainers` entry point.

`train(job, emit, should_stop)` reads as a list of named steps, each a method of `TorchRun`
(`run.py`) that sets up one thing: device and precision (`device.py`), the process group
(`distributed.py`), the data, the model of the method (`methods.py`), the batches, the saved
weights, optimizer and schedule (`optim.py`), the saved state (`state.py`), and the loss
(`_Objective`, below); then `loop.run`, then the final adapter.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ft_train_core.protocol import (
    Capabilities,
    ClassificationResult,
    Launch,
    LossResult,
    Placement,
    TrainResult,
)
from ft_train_torch import loop
from ft_train_torch.device import autocast, device_name, load_dtype, pick_device, resolve_precision
from ft_train_torch.distributed import SHARDED_METHODS
from ft_train_torch.methods import METHODS
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
from ft_train_torch.run import PAD_MULTIPLE as PAD_MULTIPLE  # where callers find it
from ft_train_torch.run import TorchRun

Event = dict[str, Any]


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
        # First the device, the precision and the method's fit to them: a config this machine
        # cannot run fails before a process group starts or a file opens.
        run = TorchRun(job)
        with contextlib.ExitStack() as stack:  # undoes the steps' setup however the run ends
            # Seeds and the process group before anything is loaded: every process starts alike.
            run.setup_process_group(stack)
            # The data before the model: a classifier is built with the data's classes.
            run.setup_data(stack)
            run.setup_model()
            # The batches after the model: a plan made here reads the memory left (and held)
            # once the weights are loaded (ft_train_core.plan.memory_budget).
            run.setup_batches()
            # Saved weights before DDP/FSDP wrap the model: FSDP shards what it is given.
            run.restore_weights()
            run.setup_parallel()
            run.setup_optimizer()
            # After the optimizer and scheduler exist: a checkpoint's state is loaded into them.
            run.setup_state()
            # The loss runs the forward pass through the wrapped (or compiled) model.
            objective = _Objective(run, stack)
            run.setup_offload()

            say = emit if run.world.is_main else (lambda event: None)
            say(run.start_event())
            for event in run.notes:  # what the steps found, told once `start` opened the run
                say(event)
            inputs = run.loop_inputs(objective.loss, objective.count, objective.score)
            outcome = loop.run(inputs, run.state, emit=say, should_stop=should_stop)
            adapter = run.save_final(outcome)
            say(outcome.end_event(adapter))
            return TrainResult(
                reason=outcome.reason,
                step=outcome.step,
                adapter_path=adapter,
                best_checkpoint=outcome.best_checkpoint,
                metrics=outcome.metrics,
            )


class _Objective:
    """What the loop scores batches with, over the run's model: `loss` (summed over a batch's
    targets), `count` (the targets) and, for a classifier's evaluation, `score`.

    Made once the model is wrapped: the forward pass goes through `run.forward`. For a causal
    LM trained on its own tokens it hooks the output layer to compute logits only where there
    are targets (not for prompt-learning methods, whose virtual tokens shift the positions);
    `stack` removes the hook. It sits beside `train`, not in `TorchRun`, as mlx-lm's trainer
    takes its loss as a parameter: a new objective is a change here, not to the setup or the
    loop (and tests patch the loss functions here, `ft_train_torch.trainer.selected_lm_loss`).
    """

    def __init__(self, run: TorchRun, stack: contextlib.ExitStack) -> None:
        self.run = run
        self.cast = autocast(run.precision, run.device)
        # The loss is computed a chunk of targets at a time where the output layer can be
        # called after the forward pass (not under FSDP or torch.compile).
        chunked = not run.fsdp and not run.settings.compile
        self.output = (
            None if run.classify or run.prompt else OutputAtTargets(run.base, chunked=chunked)
        )
        if self.output is not None:
            stack.callback(self.output.remove)

    def logits(self, module: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
        run = self.run
        inputs = model_inputs(batch, run.device, prompt_learning=run.prompt, task=run.task)
        with self.cast():
            return (run.forward if module is run.wrapped else module)(**inputs).logits

    def loss(self, module: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
        if self.run.classify:
            return classification_loss(self.logits(module, batch), batch)
        if self.output is None:
            return causal_lm_loss(self.logits(module, batch), batch)
        with self.output.at(trained_positions(batch), self.run.device):
            logits = self.logits(module, batch)
        if self.output.chunked:
            with self.cast():
                return self.output.chunked_loss(batch)
        return selected_lm_loss(logits, batch)

    def count(self, batch: dict[str, np.ndarray]) -> int:
        return trained_tokens(batch, self.run.task)

    def score(
        self, module: torch.nn.Module, batch: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, int]:
        logits = self.logits(module, batch)
        return classification_loss(logits, batch), classification_correct(logits, batch)
