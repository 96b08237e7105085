"""The `train.yml` schema: one attrs class per section, every field with a default and a help text.

The help texts are the single source for `ft config schema` (JSON Schema), the generated config
reference in `docs/`, and the comments `ft init` writes. Bounds (`min`, `max`, `pattern`) live in
field metadata so the loader checks them and the JSON Schema states them.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    exclusive_min: bool = False,
    pattern: str | None = None,
    allowed: str | None = None,
    example: Any = None,
    init: bool = False,
) -> Any:
    """An attrs field carrying the metadata that docs, JSON Schema and validation read.

    `allowed` says in words what `pattern` accepts; a refused value's error quotes it.
    `init=True` marks the settings `ft init` writes into a new train.yml.
    """
    metadata = {
        "help": help,
        "min": min,
        "max": max,
        "exclusive_min": exclusive_min,
        "pattern": pattern,
        "allowed": allowed,
        "example": example,
        "init": init,
    }
    if isinstance(default, list | dict):
        factory = default.copy
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


DEFAULT_MODEL = "smollm2-135m"


@attrs.define(kw_only=True)
class ModelConfig:
    """The base model to fine-tune."""

    name: str = setting(
        DEFAULT_MODEL,
        "The base model: a local folder, a catalog alias (see `ft models list`), a Hugging Face "
        "repo id (`org/name`, optionally `org/name@revision`), or a `.gguf` file. The default is "
        "SmolLM2-135M-Instruct, which ships with ft and works offline.",
        example="Qwen/Qwen2.5-0.5B-Instruct",
        init=True,
    )
    revision: str | None = setting(
        None, "A branch, tag or commit of the Hub repo. Overrides an `@revision` in `name`."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto",
        "The dtype the base weights are loaded in. `auto`: bfloat16 where the device computes "
        "it well, else float32.",
    )
    task: Literal["causal-lm", "sequence-classification"] = setting(
        "causal-lm",
        "What the model learns: `causal-lm` (chat, instructions, text) or "
        "`sequence-classification` (a label per row, BERT-style models; set `data.label_column`).",
    )
    num_labels: int | None = setting(
        None,
        "Number of classes for `sequence-classification`. Default: counted from the data.",
        min=2,
    )
    trust_remote_code: bool = setting(
        False,
        "Run Python code shipped inside the model repo. Leave off unless you trust this "
        "model's author: the code runs with your permissions.",
    )


@attrs.define(kw_only=True)
class DataSource:
    """One source of a mixture (`data.train` as a list), or a Hub dataset with its options."""

    path: str = setting(
        "",
        "The data: a file, a folder, a glob, an http(s) URL, or a Hugging Face dataset "
        "(`org/name` or `hf://datasets/org/name`).",
    )
    weight: float | None = setting(
        None,
        "Its share of the weighted sources: weight / the sum of their weights. The weighted "
        "part of the mix is as large as it can be without repeating a row of any of them.",
        min=0.0,
        exclusive_min=True,
    )
    rows: int | None = setting(
        None, "Take this many of its rows (sampled, seeded; repeated when it has fewer).", min=1
    )
    ratio: float | None = setting(
        None,
        "Take this multiple of its rows: 0.5 half of them, 2 each twice.",
        min=0.0,
        exclusive_min=True,
    )
    config: str | None = setting(None, "A Hub dataset's configuration (subset).")
    split: str | None = setting(None, "A Hub dataset's split. Default: `train`.")
    revision: str | None = setting(None, "A Hub dataset's branch, tag or commit.")


@attrs.define(kw_only=True)
class DataConfig:
    """The training data and how it becomes tokens."""

    train: str | list[DataSource] = setting(
        "data/train.jsonl",
        "Training data: a file, a folder, a glob, an http(s) URL, or a Hugging Face dataset "
        "(`org/name`, `hf://datasets/org/name`). JSON, JSONL, CSV, TSV, Parquet, text, Markdown "
        "and HTML are read. Relative paths are relative to train.yml. A list of sources "
        "(`{path, weight | rows | ratio, config, split, revision}`) is a mixture.",
        init=True,
    )
    validation: str | None = setting(
        None,
        "Validation data, read like `train`. When unset, `validation_split` of the training "
        "rows is held out.",
        init=True,
    )
    test: str | None = setting(
        None,
        "Held-out test data, read like `train`: what `ft evaluate` scores by default, so the "
        "reported scores are not on the validation rows that picked the best checkpoint. "
        "Never trained on.",
    )
    validation_split: float = setting(
        0.05,
        "Share of the training rows held out for validation when `validation` is unset "
        "(seeded; stratified when `label_column` is set). 0 turns validation off.",
        min=0.0,
        max=0.5,
    )
    format: str = setting(
        "auto",
        "The data format: `auto` (detected from the rows, and the reason is shown), `alpaca`, "
        "`sharegpt`, `openai`, `prompt_completion`, `text`, `columns` (see `columns`), or a "
        "format added by a plugin.",
        init=True,
    )
    columns: dict[str, str] = setting(
        {},
        "For `format: columns`: which of your columns plays which part, e.g. "
        "`{prompt: question, response: answer, system: instructions}`.",
    )
    template: str = setting(
        "auto",
        "The chat template: `auto` (the tokenizer's own), `alpaca`, `chatml`, `llama3`, "
        "`mistral`, or a path to a Jinja template file. The same template is used for "
        "training, evaluation, serving and export.",
        init=True,
    )
    system_prompt: str | None = setting(
        None, "A system message added to every conversation that has none."
    )
    max_seq_length: int = setting(
        2048,
        "Longest sequence in tokens. Longer rows are handled as `overlong` says.",
        min=8,
        init=True,
    )
    packing: bool = setting(
        True,
        "Pack several examples into each sequence (attention stays within each example): "
        "no compute is spent on padding.",
    )
    train_on: Literal["completions", "all"] = setting(
        "completions",
        "`completions`: learn only the assistant's turns (every one, with its end-of-turn "
        "token); `all`: learn every token, prompts included.",
    )
    overlong: Literal["truncate", "drop", "error"] = setting(
        "truncate",
        "What to do with a row longer than `max_seq_length`: cut it, drop it, or stop with an "
        "error. Either way the count is reported.",
    )
    dedup: Literal["none", "exact", "near"] = setting(
        "exact",
        "Remove duplicate rows: `exact` copies, or `near` duplicates too (MinHash, see "
        "`near_dup_threshold`).",
    )
    near_dup_threshold: float = setting(
        0.85,
        "Jaccard similarity above which two rows count as near duplicates.",
        min=0.0,
        max=1.0,
    )
    label_column: str | None = setting(
        None,
        "The column holding the class label, for classification and stratified splits.",
    )
    text_documents: Literal["file", "blank_line", "line"] = setting(
        "file",
        "How a `.txt`, `.md` or `.html` file is cut into documents for continued pretraining: "
        "the whole `file`, each paragraph between blank lines (`blank_line`), or each `line`. "
        "Each document ends with the end-of-text token; one longer than `max_seq_length` "
        "becomes as many blocks as it needs, never cut short.",
    )
    mix_seed: int = setting(
        0, "The seed that picks the rows of a mixture (`train` as a list of sources)."
    )
    text_overlap: int = setting(
        0,
        "Raw text longer than `max_seq_length`: how many tokens each block repeats from the "
        "block before it, as context that is not trained again. 0: blocks follow each other.",
        min=0,
    )


MethodName = Literal["lora", "dora", "qlora", "full", "prefix", "p-tuning"]


@attrs.define(kw_only=True)
class MethodConfig:
    """How the model is adapted. `method: lora` is short for `method: {name: lora}`."""

    name: MethodName = setting(
        "lora",
        "`lora`, `dora` (weight-decomposed LoRA), `qlora` (LoRA over a 4/8-bit quantized "
        "base), `full` (every weight), `prefix` (prefix tuning: trained key/value prefixes in "
        "every layer, the deep prompts of P-tuning v2 without its reparameterization) or "
        "`p-tuning` (P-tuning v1: virtual input tokens from a trained prompt encoder, peft's "
        "PromptEncoder).",
        init=True,
    )
    rank: int = setting(8, "LoRA rank r: the adapter's width.", min=1, init=True)
    alpha: float = setting(
        16.0,
        "LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with `rslora`).",
        min=0.0,
        exclusive_min=True,
        init=True,
    )
    dropout: float = setting(0.05, "Dropout on the LoRA input.", min=0.0, max=0.9)
    target_modules: str | list[str] = setting(
        "all-linear",
        "Which layers get adapters: `all-linear`, or a list of module names such as "
        "`[q_proj, v_proj]`.",
        init=True,
    )
    rslora: bool = setting(False, "Rank-stabilized LoRA scaling (alpha/sqrt(r)).")
    quant_bits: Literal[4, 8] = setting(4, "Bits of the quantized base for `qlora`.")
    num_virtual_tokens: int = setting(20, "Virtual tokens for `prefix` and `p-tuning`.", min=1)
    objective: Literal["sft", "dpo", "orpo"] = setting(
        "sft",
        "What the model learns from: `sft` (supervised: the answers' tokens), `dpo` (Direct "
        "Preference Optimization: preference pairs, against a reference model: the base with "
        "the adapter off, or for `full` the base's log-probabilities computed once before "
        "training) or `orpo` (Odds Ratio Preference Optimization: preference pairs, no "
        "reference model). `dpo` and `orpo` need data prepared from preference pairs "
        "(docs/preference.md).",
    )
    beta: float = setting(
        0.1,
        "`dpo`: how far the model may move from the reference: a higher beta keeps it closer "
        "(the rewards are beta times the log-probability ratios).",
        min=0.0,
        exclusive_min=True,
    )
    label_smoothing: float = setting(
        0.0,
        "`dpo`: the share of pairs assumed mislabelled (conservative DPO); 0 is plain DPO.",
        min=0.0,
        max=0.49,
    )
    orpo_lambda: float = setting(
        0.1,
        "`orpo`: the weight of the odds-ratio term against the chosen answers' own loss "
        "(TRL's ORPOConfig.beta).",
        min=0.0,
        exclusive_min=True,
    )


@attrs.define(kw_only=True)
class TrainingConfig:
    """The optimisation: schedule, batches, precision, evaluation and checkpoints."""

    backend: Literal["auto", "torch", "mlx"] = setting(
        "auto",
        "`auto` picks MLX on Apple Silicon and PyTorch elsewhere.",
        init=True,
    )
    epochs: float = setting(
        3.0, "Passes over the training data.", min=0.0, exclusive_min=True, init=True
    )
    max_steps: int | None = setting(
        None, "Stop after this many optimizer steps, whatever `epochs` says.", min=1
    )
    batch_size: int | Literal["auto"] = setting(
        4,
        "Rows per micro-batch, or `auto`: ft sizes each optimizer step by `tokens_per_step` "
        "and splits it into micro-batches that fit in memory (gradient accumulation makes up "
        "the rest). A fixed size that cannot fit is refused before training, with the figures.",
        min=1,
        init=True,
    )
    tokens_per_step: int | Literal["auto"] = setting(
        "auto",
        "With `batch_size: auto`: the tokens each optimizer step learns from. `auto` picks it "
        "from the dataset's size: the run's tokens / 128 as a power of two between 256 and "
        "16,384, so a small dataset still gets enough steps to learn (docs/training.md, "
        "'The plan').",
        min=64,
    )
    gradient_accumulation_steps: int = setting(
        1,
        "Micro-batches per optimizer step (with a fixed `batch_size`; `auto` picks it).",
        min=1,
    )
    learning_rate: float = setting(
        2e-4, "Peak learning rate.", min=0.0, exclusive_min=True, init=True
    )
    lr_scheduler: Literal["constant", "linear", "cosine"] = setting(
        "cosine", "Learning-rate schedule after warmup."
    )
    warmup_ratio: float = setting(
        0.03, "Share of the steps spent warming the learning rate up from 0.", min=0.0, max=1.0
    )
    warmup_steps: int | None = setting(
        None, "Warmup steps; overrides `warmup_ratio` when set.", min=0
    )
    optimizer: Literal["adamw", "adam", "sgd", "adafactor"] = setting(
        "adamw", "The optimizer. AdamW uses bias correction on both backends."
    )
    weight_decay: float = setting(0.0, "Decoupled weight decay.", min=0.0)
    adam_beta1: float = setting(
        0.9, "Adam(W) decay rate of the gradient average (beta1).", min=0.0, max=1.0
    )
    adam_beta2: float = setting(
        0.999, "Adam(W) decay rate of the squared-gradient average (beta2).", min=0.0, max=1.0
    )
    adam_epsilon: float = setting(
        1e-8,
        "Adam(W) epsilon, added to the denominator for stability.",
        min=0.0,
        exclusive_min=True,
    )
    max_grad_norm: float | None = setting(
        1.0,
        "Clip the gradient norm to this value; null turns clipping off.",
        min=0.0,
        exclusive_min=True,
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto",
        "Compute precision: `auto` uses bf16 where the device supports it, else fp32. `fp16` "
        "uses a loss scaler (CUDA).",
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute activations in the backward pass: less memory, about 30% slower."
    )
    compile: bool = setting(
        False, "Compile the training step (torch.compile / mx.compile); the first step is slow."
    )
    seed: int = setting(42, "Seed for data order, initialisation and dropout.", init=True)
    eval_every: int | None = setting(
        None, "Evaluate every N optimizer steps. Default: at the end of each epoch.", min=1
    )
    eval_samples: int = setting(
        2,
        "At each evaluation, answer this many validation prompts (the first rows that have "
        "a prompt, through the run's chat template) greedily with the model as it is, and "
        "report them beside their reference answers (the dashboard's Samples panel). 0: none.",
        min=0,
    )
    eval_sample_tokens: int = setting(
        48, "The most tokens each evaluation sample's answer may have.", min=1
    )
    save_every: int | None = setting(
        None,
        "Save a checkpoint every N optimizer steps. Default: at the end of each epoch.",
        min=1,
    )
    keep_last: int = setting(
        2, "Checkpoints to keep besides the best one; older ones are deleted.", min=1
    )
    early_stopping_patience: int | None = setting(
        None,
        "Stop when validation loss has not improved for this many evaluations.",
        min=1,
    )
    early_stopping_threshold: float = setting(
        0.0, "Smallest decrease in validation loss that counts as an improvement.", min=0.0
    )


@attrs.define(kw_only=True)
class ResourcesConfig:
    """Which hardware the job uses, and how much of it."""

    device: str = setting(
        "auto",
        "`auto` (cuda > mps > cpu), `cpu`, `cuda`, `cuda:N` or `mps`.",
        pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$",
    )
    max_memory_gb: float | None = setting(
        None,
        "Upper bound on accelerator (or unified) memory the trainer may use.",
        min=0.0,
        exclusive_min=True,
    )
    nproc_per_node: int = setting(
        1, "Training processes on this machine (torchrun / mlx.launch).", min=1
    )
    nnodes: int = setting(1, "Machines taking part (torch multi-node).", min=1)
    strategy: Literal["ddp", "fsdp"] = setting(
        "ddp",
        "How several torch processes share the work: `ddp` keeps a whole copy of the model in "
        "each and averages gradients; `fsdp` (FSDP2) shards weights, gradients and optimizer "
        "state across them, for models too big for one GPU. Checkpoints are the same either way.",
    )
    hostfile: str | None = setting(None, "For MLX across several Macs: the `mlx.launch` hostfile.")
    activation_offloading: bool = setting(
        False, "Keep activations in CPU memory between forward and backward (CUDA)."
    )
    num_threads: int | None = setting(
        None, "CPU threads for compute. Default: what the backend picks.", min=1
    )


@attrs.define(kw_only=True)
class OutputConfig:
    """Where the run goes and what it produces."""

    dir: str = setting(
        "runs",
        "Folder that holds run folders. Relative paths are relative to train.yml.",
        init=True,
    )
    run_name: str | None = setting(
        None,
        "Name of this run's folder: letters, digits, `.`, `_` and `-`, starting with a letter "
        "or digit. Default: date, time, model and method.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        allowed="a run name takes letters (A-Z, a-z), digits, '.', '_' and '-', and starts with "
        "a letter or digit (no spaces, no '/')",
    )
    export: list[str] = setting(
        [],
        "Formats to export, each checked, when a run completes (as `ft export RUN --format "
        "...` writes them into the run's exports/): `peft`, `hf`, `mlx`, `mlx-adapter`, "
        "`gguf`, `gguf-lora`, `ollama`. A failed export is reported; the run stays completed.",
    )
    push_to_hub: str | None = setting(
        None,
        "A Hub repo id (`user/name`) to upload the final adapter to when a run completes "
        "(needs `hf_token` in passwords.yml or HF_TOKEN).",
    )


@attrs.define(kw_only=True)
class LoggingConfig:
    """Where metrics go. They always go to the run's metrics.jsonl and the job store."""

    every: int = setting(
        10,
        "Send training metrics to TensorBoard and W&B every N optimizer steps (the loss averaged "
        "over them); metrics.jsonl and the job store keep every step.",
        min=1,
    )
    tensorboard: bool = setting(True, "Write TensorBoard event files into the run folder.")
    wandb: bool = setting(
        False, "Send metrics to Weights & Biases (needs `wandb_api_key` in passwords.yml)."
    )
    wandb_project: str = setting("ft", "The Weights & Biases project.")
    wandb_mode: Literal["online", "offline"] = setting(
        "online", "`offline` writes W&B runs locally to sync later."
    )
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info",
        "How much `ft train` tells you while it works: `info`, what it decided and why; "
        "`warning`, warnings and errors only; `error`, errors only; `debug`, also every event "
        "as it is recorded.",
    )


@attrs.define(kw_only=True)
class TuneConfig:
    """Hyper-parameter search with `ft tune` (docs/tune.md): each trial is an ordinary run."""

    trials: int = setting(10, "Finished trials (completed or pruned) the study runs to.", min=1)
    metric: str = setting(
        "eval_loss",
        "The metric to optimise, from the runs' evaluations: `eval_loss` (the run's best), "
        "`perplexity` or `accuracy` (the last evaluation's).",
    )
    direction: Literal["minimize", "maximize"] = setting(
        "minimize", "Whether lower or higher `metric` is better."
    )
    sampler: Literal["tpe", "random", "grid"] = setting(
        "tpe",
        "How trials are chosen: `tpe` (multivariate TPE, Bayesian), `random`, or `grid` "
        "(every combination of `choices`; ranges need a `step`).",
    )
    search_space: dict[str, dict[str, Any]] = setting(
        {},
        "Settings to vary, by dotted name: `{training.learning_rate: {low: 1e-5, high: 1e-3, "
        "log: true}, method.rank: {choices: [8, 16, 32]}}`; `when: {method.rslora: false}` "
        "makes one conditional, `{same_as: method.rank, times: 2}` ties it to another. Empty: "
        "ft's default LoRA space (docs/tune.md).",
    )
    timeout_minutes: float | None = setting(
        None, "Stop starting new trials after this long.", min=0.0, exclusive_min=True
    )
    pruning: bool = setting(True, "Stop unpromising trials early (needs evaluations).")
    pruner: Literal["median", "hyperband"] = setting(
        "median",
        "How a trial is judged at each evaluation: `median` (worse than the median of earlier "
        "trials at that step) or `hyperband` (successive halving brackets).",
    )
    keep_adapters: int = setting(
        3, "Keep the adapters and checkpoints of this many best trials; others are deleted.", min=1
    )
    max_retries: int = setting(
        2, "Times a trial whose process died (killed, crashed) is tried again.", min=0
    )


@attrs.define(kw_only=True)
class TrainConfig:
    """A training job: the whole of a `train.yml`."""

    profile: str | None = setting(
        None,
        "Start from a profile's defaults: `chat`, `instruction`, `code` or `domain` "
        "(continued pretraining), or a path to a YAML file of defaults.",
        init=True,
    )
    model: ModelConfig = attrs.field(factory=ModelConfig, metadata={"help": ModelConfig.__doc__})
    data: DataConfig = attrs.field(factory=DataConfig, metadata={"help": DataConfig.__doc__})
    method: MethodConfig = attrs.field(
        factory=MethodConfig, metadata={"help": MethodConfig.__doc__}
    )
    training: TrainingConfig = attrs.field(
        factory=TrainingConfig, metadata={"help": TrainingConfig.__doc__}
    )
    resources: ResourcesConfig = attrs.field(
        factory=ResourcesConfig, metadata={"help": ResourcesConfig.__doc__}
    )
    output: OutputConfig = attrs.field(
        factory=OutputConfig, metadata={"help": OutputConfig.__doc__}
    )
    logging: LoggingConfig = attrs.field(
        factory=LoggingConfig, metadata={"help": LoggingConfig.__doc__}
    )
    tune: TuneConfig = attrs.field(factory=TuneConfig, metadata={"help": TuneConfig.__doc__})


SECTION_CLASSES: tuple[type, ...] = (
    ModelConfig,
    DataConfig,
    MethodConfig,
    TrainingConfig,
    ResourcesConfig,
    OutputConfig,
    LoggingConfig,
    TuneConfig,
)
for _cls in (*SECTION_CLASSES, TrainConfig, DataSource):
    # The module uses postponed annotations; resolve them once so field.type is a real type.
    attrs.resolve_types(_cls)

SECTIONS: tuple[str, ...] = tuple(f.name for f in attrs.fields(TrainConfig) if attrs.has(f.type))
