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

from ft_train_core.preference import (
    OBJECTIVES,
    PairBatches,
    PreferenceTotals,
    compute_reference,
    dataset_source,
    is_preference,
    load_reference,
    pair_count,
    pair_layout,
    reference_file,
    save_reference,
)
from ft_train_core.protocol import (
    Capabilities,
    ClassificationResult,
    Launch,
    LossResult,
    Placement,
    PreferenceResult,
    TrainResult,
)
from ft_train_torch import loop
from ft_train_torch.device import autocast, device_name, load_dtype, pick_device, resolve_precision
from ft_train_torch.distributed import SHARDED_METHODS
from ft_train_torch.methods import METHODS
from ft_train_torch.packing import (
    OutputAtTargets,
    causal_lm_loss,
    causal_token_losses,
    classification_correct,
    classification_loss,
    model_inputs,
    selected_lm_loss,
    selected_token_losses,
    trained_positions,
    trained_tokens,
)
from ft_train_torch.preference import dpo_loss, orpo_loss, pair_logps
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
            objectives=OBJECTIVES,
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
        from ft_train_torch.evaluation import evaluate_preference, load_for_eval

        model = load_for_eval(model_path, adapter, device=device)
        return evaluate_preference(model, dataset, batch_size=batch_size)

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
            inputs = run.loop_inputs(
                objective.loss, objective.count, objective.score, objective.totals, objective.cast
            )
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
        # Preference objectives (ft_train_core.preference): the rewards of every batch are
        # added up here for the step's and the evaluation's metrics.
        method = run.method
        self.objective = method.objective
        self.totals = PreferenceTotals() if is_preference(run.config) else None
        self.tables: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.objective == "dpo" and method.name == "full":
            self.tables = self._stored_reference()

    def logits(self, module: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
        run = self.run
        inputs = model_inputs(batch, run.device, prompt_learning=run.prompt, task=run.task)
        with self.cast():
            return (run.forward if module is run.wrapped else module)(**inputs).logits

    def loss(self, module: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
        if self.totals is not None:
            return self.preference_loss(module, batch)
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
        if self.totals is not None:
            return pair_count(batch)
        return trained_tokens(batch, self.run.task)

    # -- preference objectives ----------------------------------------------------------------

    def token_losses(self, module: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """Each target's cross-entropy (row-major): what `loss` sums, one by one."""
        if self.output is None:
            return causal_token_losses(self.logits(module, batch), batch)
        with self.output.at(trained_positions(batch), self.run.device):
            logits = self.logits(module, batch)
        if self.output.chunked:
            with self.cast():
                return self.output.chunked_loss(batch, per_token=True)
        return selected_token_losses(logits, batch)

    def preference_loss(
        self, module: torch.nn.Module, batch: dict[str, np.ndarray]
    ) -> torch.Tensor:
        """DPO's or ORPO's loss summed over the batch's pairs (the loop divides by the pairs
        of the step); their rewards go to `totals`."""
        method = self.run.method
        layout = pair_layout(batch)
        chosen, rejected = pair_logps(-self.token_losses(module, batch), layout)
        if self.objective == "dpo":
            ref_chosen, ref_rejected = self.reference(module, batch)
            summed, chosen_rewards, rejected_rewards = dpo_loss(
                chosen,
                rejected,
                ref_chosen,
                ref_rejected,
                beta=method.beta,
                label_smoothing=method.label_smoothing,
            )
        else:
            summed, chosen_rewards, rejected_rewards = orpo_loss(
                chosen,
                rejected,
                layout.chosen_tokens,
                layout.rejected_tokens,
                lam=method.orpo_lambda,
            )
        assert self.totals is not None
        self.totals.add(chosen_rewards.cpu().numpy(), rejected_rewards.cpu().numpy())
        return summed

    def reference(
        self, module: torch.nn.Module, batch: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference log-probabilities of the batch's pairs: for full fine-tuning the
        stored ones (the training or validation table, as the model trains or evaluates); for
        adapter methods the model's own with the adapter off: the base, no second copy."""
        layout = pair_layout(batch)
        if self.tables:
            chosen, rejected = self.tables[module.training]
            ids = torch.as_tensor(layout.pair_ids)
            return chosen[ids].to(self.run.device), rejected[ids].to(self.run.device)
        with torch.no_grad(), self.run.model.disable_adapter():
            return pair_logps(-self.token_losses(self.run.model, batch), layout)

    def _stored_reference(self) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        """Full fine-tuning's reference: every pair's log-probabilities under the base,
        computed once before the first step and stored in the run folder; read back on resume
        (the weights are no longer the base's then)."""
        run = self.run
        tables: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        for training, dataset, batches in (
            (True, run.train_set, run.batches),
            (False, run.eval_set, run.eval_batches),
        ):
            if dataset is None or batches is None:
                continue
            role = "training" if training else "validation"
            path, source = reference_file(run.job.run_dir, role), dataset_source(dataset)
            found = load_reference(path, len(dataset), source)
            if found is None and run.job.resume_from is not None:
                raise ValueError(
                    f"{path}: the reference log-probabilities of this run's {role} pairs are "
                    "missing or for other data; a full fine-tune resumes in its own run "
                    "folder, with the data it started with"
                )
            if found is None:
                found = self._compute_reference(batches)
                if run.world.is_main:
                    save_reference(path, *found, source=source)
                run.note("info", f"reference log-probabilities of the {role} pairs: {path}")
            tables[training] = (
                torch.as_tensor(found[0], dtype=torch.float32),
                torch.as_tensor(found[1], dtype=torch.float32),
            )
        return tables

    def _compute_reference(self, batches: PairBatches) -> tuple[np.ndarray, np.ndarray]:
        from ft_train_core.preference import pair_batches

        model = self.run.model
        model.eval()
        ordered = pair_batches(batches.dataset.dataset, batches)  # type: ignore[attr-defined]
        ordered.shuffle = False

        def logps(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            chosen, rejected = pair_logps(-self.token_losses(model, batch), pair_layout(batch))
            return chosen.double().cpu().numpy(), rejected.double().cpu().numpy()

        with torch.no_grad():
            found = compute_reference(ordered, len(ordered.dataset), logps)
        model.train()
        return found

    def score(
        self, module: torch.nn.Module, batch: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, int]:
        logits = self.logits(module, batch)
        return classification_loss(logits, batch), classification_correct(logits, batch)
