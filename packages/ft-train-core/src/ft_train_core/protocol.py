"""The contract between ft-runs (which runs jobs) and the trainers (ft-train-torch,
ft-train-mlx, a third party's): what a trainer is, what it is given, what it reports.

Neither side imports the other: both import this package. Trainers are found through the
entry point group `ft.trainers` (`torch = "ft_train_torch.trainer:TorchTrainer"`); ft-testing's
conformance suite (`ft_testing.conformance`) is what "a trainer" means in practice: any plugin
that passes it plugs in.

A run is handed to a trainer as a `TrainJob`: the resolved config, a local model folder, the
prepared datasets (HDF5 files in ft-data's format), the run folder and the batches it was
planned with. The trainer reports progress as events, plain dicts with a `type` key, through
`emit`; each kind has a TypedDict below, so producers and consumers check the same keys:

| type | keys (besides `type`) |
| --- | --- |
| `start` | `total_steps`, `trainable_params`, `total_params`, `device`, `dtype`, `resumed_from_step` |
| `step` | `step`, `epoch` (float), `loss`, `learning_rate`, `grad_norm`, `tokens` (non-padding tokens this step), `tokens_per_s`, `elapsed_s`, `memory_bytes` (peak so far, or null); preference runs add `rewards_chosen`, `rewards_rejected`, `margin`, `accuracy` |
| `eval` | `step`, `eval_loss`, `perplexity`, `is_best`; classification runs add `accuracy`; preference runs `rewards_chosen`, `rewards_rejected`, `margin`, `accuracy` |
| `samples` | `step`, `samples`: the answers to a few validation prompts at this evaluation (`Sample`: `prompt`, `output`, `reference`, `output_tokens`); right after `eval`, when `training.eval_samples` is above 0 |
| `checkpoint` | `step`, `path`, `is_best` |
| `message` | `level` (`info`/`warning`/`error`), `text` |
| `end` | `step`, `reason` (`completed`/`early_stopping`/`interrupted`/`nan`/`max_steps`), `adapter_path`, `best_checkpoint` |

`should_stop()` is polled between steps; when it returns True the trainer saves a checkpoint
and returns with reason `interrupted` (this is how Ctrl-C and `ft runs stop` work).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NotRequired, Protocol, TypedDict, runtime_checkable

import attrs

from ft_config import TrainConfig
from ft_train_core.batch_plan import BatchPlan

Event = dict[str, Any]
Emit = Callable[[Event], None]


class StartEvent(TypedDict):
    type: Literal["start"]
    total_steps: int
    trainable_params: int
    total_params: int
    device: str
    dtype: str
    resumed_from_step: int | None


class StepEvent(TypedDict):
    type: Literal["step"]
    step: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens: int
    tokens_per_s: float
    elapsed_s: float
    memory_bytes: int | None
    # Preference runs (`ft_train_core.preference.PREFERENCE_METRICS`): over the step's pairs.
    rewards_chosen: NotRequired[float]
    rewards_rejected: NotRequired[float]
    margin: NotRequired[float]
    accuracy: NotRequired[float]


class EvalEvent(TypedDict):
    type: Literal["eval"]
    step: int
    eval_loss: float
    perplexity: float
    is_best: bool
    accuracy: NotRequired[float]  # classification: right classes; preference: right pairs
    rewards_chosen: NotRequired[float]
    rewards_rejected: NotRequired[float]
    margin: NotRequired[float]


class Sample(TypedDict):
    prompt: str  # the validation row's prompt as the model read it: its chat template's text
    output: str  # the model's greedy answer, special tokens left out
    reference: str  # the row's own answer (its first trained span)
    output_tokens: int  # tokens generated, the stop token not counted


class SamplesEvent(TypedDict):
    type: Literal["samples"]
    step: int
    samples: list[Sample]


class CheckpointEvent(TypedDict):
    type: Literal["checkpoint"]
    step: int
    path: str
    is_best: bool


class MessageEvent(TypedDict):
    type: Literal["message"]
    level: Literal["info", "warning", "error"]
    text: str


class EndEvent(TypedDict):
    type: Literal["end"]
    step: int
    reason: str
    adapter_path: str | None
    best_checkpoint: str | None


PREFERENCE_METRICS = ("rewards_chosen", "rewards_rejected", "margin", "accuracy")
"""The keys preference runs (DPO, ORPO) add to `step` and `eval` events
(`ft_train_core.preference`)."""

END_REASONS = ("completed", "max_steps", "early_stopping", "interrupted", "nan")
"""What `TrainResult.reason` and the `end` event say."""


@attrs.frozen
class Capabilities:
    """What a trainer can do on this machine."""

    backend: str
    methods: tuple[str, ...]
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    distributed: bool = False
    notes: tuple[str, ...] = ()
    # Methods it can shard across processes (`resources.strategy: fsdp`); empty: none.
    sharded_methods: tuple[str, ...] = ()
    # Tasks it trains and evaluates (`model.task`).
    tasks: tuple[str, ...] = ("causal-lm",)
    # What it trains on (`method.objective`): `sft`, and the preference objectives `dpo`, `orpo`.
    objectives: tuple[str, ...] = ("sft",)


@attrs.frozen
class Placement:
    """Where and how a config would train on this machine: the device (`cpu`, `cuda:N`,
    `mps`, `mlx` for MLX on a GPU, `mlx-cpu`), the compute precision (`fp32`, `bf16`,
    `fp16`) and the dtype the base weights load in. What `ft train`'s plan estimates for."""

    device: str
    precision: str
    weights_dtype: str


@attrs.frozen
class Launch:
    """Run the trainer in `nproc` local processes (torchrun for torch, mlx.launch for MLX),
    optionally as one node of several (`nnodes`, `node_rank`, `master_addr`, `master_port`;
    MLX reads the hosts from `hostfile`)."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    hostfile: Path | None = None

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1 or self.hostfile is not None


@attrs.frozen
class TrainJob:
    """Everything a trainer needs for one run; all paths are local and already exist."""

    config: TrainConfig
    model_path: Path
    train_data: Path
    validation_data: Path | None
    run_dir: Path
    resume_from: Path | None = None
    plan: BatchPlan | None = None
    """How to batch the data (`ft_train_core.plan`): made and checked by `ft train` before
    training. None: the trainer makes it itself (`ft_train_core.plan.batch_plan_for`)."""

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        """Where the final adapter (PEFT layout) or full model goes."""
        return self.run_dir / "adapter"


@attrs.frozen
class TrainResult:
    """How a run ended."""

    reason: str
    step: int
    adapter_path: Path | None
    best_checkpoint: Path | None
    metrics: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen
class LossResult:
    """A model's loss on a prepared dataset: the mean over its trained tokens, as the
    trainer's `eval` events compute it."""

    loss: float
    perplexity: float
    tokens: int
    examples: int


@attrs.frozen
class ClassificationResult:
    """A sequence classifier on a prepared dataset with labels."""

    loss: float  # mean cross-entropy per example
    predictions: list[str]  # each example's predicted class, by name
    labels: list[str]  # each example's class, by name
    label_names: list[str]  # the model's classes, in output order

    @property
    def accuracy(self) -> float:
        right = sum(p == y for p, y in zip(self.predictions, self.labels, strict=True))
        return right / len(self.labels) if self.labels else float("nan")


@attrs.frozen
class PreferenceResult:
    """A model's log-probabilities of the answers of preference pairs (a prepared dataset with
    rejected answers): each pair's summed log-probability of its chosen and of its rejected
    answer, and their trained tokens, in the dataset's order. What a trainer's optional
    `evaluate_preference(model_path, adapter, dataset, *, batch_size=4, device="auto")` gives
    (`ft evaluate` scores preference accuracy with it)."""

    chosen_logps: list[float]
    rejected_logps: list[float]
    chosen_tokens: list[int]
    rejected_tokens: list[int]

    @property
    def accuracy(self) -> float:
        """The share of pairs whose chosen answer the model finds the more likely."""
        pairs = zip(self.chosen_logps, self.rejected_logps, strict=True)
        right = sum(c > r for c, r in pairs)
        return right / len(self.chosen_logps) if self.chosen_logps else float("nan")


@runtime_checkable
class Trainer(Protocol):
    """A training backend: trains jobs, says how to launch them on several processes, and
    evaluates what it trained."""

    name: str

    def capabilities(self) -> Capabilities:
        """What this backend supports here (cheap: no model loading)."""
        ...

    def placement(self, config: TrainConfig) -> Placement:
        """The device, precision and weights dtype `config` would train with here (no model
        loading): the same choices `train` makes."""
        ...

    def train(self, job: TrainJob, emit: Emit, should_stop: Callable[[], bool]) -> TrainResult:
        """Train `job`, emitting events, until done, stopped, or failed. Raises on errors the
        user must fix (bad method for this model, a plan that cannot fit...)."""
        ...

    def launch_command(self, job_file: Path, launch: Launch) -> Sequence[str]:
        """The command (argv) that starts `launch.nproc` processes of this trainer on this
        node, each running the job file (`ft_train_core.jobs`). Raises ValueError when the
        backend cannot run several processes."""
        ...

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
        """The loss of the model at `model_path` (with the adapter folder `adapter`, or a full
        fine-tune's folder) on a prepared dataset, as the trainer's `eval` events compute it."""
        ...

    def evaluate_classification(
        self,
        model_path: Path,
        adapter: Path | None,
        dataset: Path,
        *,
        batch_size: int = 8,
        device: str = "auto",
    ) -> ClassificationResult:
        """A sequence classifier's loss and predictions on a prepared dataset with labels.
        A trainer without classification (see `capabilities().tasks`) raises ValueError."""
        ...
