"""How much memory a training step needs, before any weight is loaded.

`estimate_training_memory` adds up what is alive at the peak of one optimizer step: the
weights (at their dtype or quantization), the adapters, their gradients, the optimizer state,
the activations saved for the backward pass, the logits and the loss on top of them, and what
the framework itself holds. Each term is a formula over the model's shape; the activation and
logit constants were calibrated by measuring peak RSS of real torch training steps on the CPU
(see docs/memory.md for the measurements, the commands and the error).

`ft_train_core.plan` turns the estimate into a run's batches: the largest micro-batch that fits
under the memory a process may use, checked before any weight is loaded.

Assumptions the numbers rest on (ft's training): attention per example through SDPA's
flash kernels (no seq x seq score matrix is kept), adapters and optimizer state in float32,
mixed precision with float32 master weights for a full fine-tune in bfloat16/float16, logits
at the trained positions only, and a training loop that drops them after the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ft_models.shape import GATED_MLP, ModelShape

METHODS = ("full", "lora", "dora", "qlora", "prefix", "p-tuning")
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# What the framework holds before the model: the interpreter, torch, transformers, peft, ft's
# own packages and the data pipeline (measured: 0.91 GB RSS after importing ft's CLI, torch
# 2.15, transformers 5.24 and peft 0.21 on Linux, 0.97 GB once `ft train` has prepared its
# data; 0.66 GB for mlx + mlx-lm). On CUDA it stands for the CUDA context plus the caching
# allocator's slack.
FRAMEWORK_BYTES = 900 * 2**20

# Bytes per parameter of a quantized base (QLoRA). bitsandbytes nf4 packs two weights per byte
# and keeps one absmax per block of 64; with double quantization (ft's default) that absmax is
# 8-bit, with one float32 scale per 256 absmaxes. LLM.int8 keeps one float32 scale per row.
NF4_BLOCK = 64
NF4_BYTES_PER_PARAM = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * 256)
INT8_BYTES_PER_PARAM = 1.0  # + 4 bytes per output row, added from the shapes

# The loss keeps log-softmax of the logits (float32), and its backward pass makes two more
# vocabulary-sized float32 tensors: three float32 copies at the peak (measured with
# saved-tensor hooks and RSS on SmolLM2-135M).
LOGIT_FLOAT32_COPIES = 3.0

# Peak RSS / the tensors counted here, for activations and logits: the allocator keeps freed
# pages (glibc's heap on the CPU, the caching allocator on CUDA) and the backward pass makes
# short-lived gradient buffers. Measured 1.33 to 1.56 on SmolLM2-135M training steps on the
# CPU (docs/memory.md), where the counted tensors matched saved-tensor hooks within 2%.
ALLOCATOR_FACTOR = 1.35

# LoRA dropout keeps its mask: torch's CPU kernel stores it in the input's dtype (the adapter's
# float32), CUDA's fused kernel as 1-byte booleans. The CPU figure is used: on CUDA the
# estimate is 3 bytes per adapted input high.
DROPOUT_MASK_BYTES = 4

# prefix / p-tuning: ft's default number of virtual tokens (`method.num_virtual_tokens`).
VIRTUAL_TOKENS = 20


@attrs.frozen
class MemoryEstimate:
    """The peak memory of one training step, in bytes, and what it is made of.

    `breakdown` keys: weights, adapters, gradients, optimizer, activations, logits, framework.
    `total_bytes` is their sum. `notes` says what the numbers assume.
    """

    total_bytes: int
    breakdown: dict[str, int]
    method: str
    batch_size: int
    seq_len: int
    dtype: str
    trainable_parameters: int
    notes: tuple[str, ...] = ()

    def to_gb(self) -> float:
        """The total in GB (10^9 bytes), as disk and RAM sizes are quoted to users."""
        return self.total_bytes / 1e9

    def describe(self) -> str:
        """A few lines a person reads: the total, then each term with its share."""
        head = (
            f"{self.method} training, batch {self.batch_size} x {self.seq_len} tokens, "
            f"{self.dtype}: about {_gb(self.total_bytes)} at the peak "
            f"({self.trainable_parameters:,} trainable parameters)"
        )
        width = max(len(name) for name in self.breakdown)
        lines = [head]
        for name, size in self.breakdown.items():
            share = 100 * size / self.total_bytes if self.total_bytes else 0.0
            lines.append(f"  {name:<{width}}  {_gb(size):>9}  {share:5.1f}%")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


def estimate_training_memory(
    shape: ModelShape,
    *,
    method: str = "lora",
    batch_size: int = 1,
    seq_len: int = 2048,
    dtype: str = "bfloat16",
    lora_rank: int = 16,
    lora_targets: str | list[str] = "all-linear",
    quant_bits: int = 4,
    gradient_checkpointing: bool = True,
    optimizer: str = "adamw",
    lora_dropout: float = 0.05,
    target_fraction: float = 1.0,
    weights_dtype: str | None = None,
    attention: str = "sdpa",
    attention_span: int | None = None,
    logit_rows: int | None = None,
) -> MemoryEstimate:
    """Estimate the peak memory of one training step of a model of `shape`.

    `method` is one of full, lora, dora, qlora, prefix, p-tuning; `dtype` the compute dtype
    (float32, bfloat16, float16, or fp32/bf16/fp16); `weights_dtype` the dtype the frozen base
    is loaded in when it differs (a float32 base under bfloat16 autocast keeps a bfloat16 copy
    of each weight for the backward pass); `lora_targets` "all-linear" or module names from
    `shape.linear_layer_shapes()`; `lora_dropout` 0 saves the dropout's copies; `quant_bits` 4
    or 8 (qlora only). `target_fraction` is the share of the tokens that are trained: ft
    computes logits there only. `attention` "sdpa" keeps no score matrix; "eager" keeps
    heads x `attention_span` probabilities per token (the longest example, or `seq_len`).
    `logit_rows`: the loss computes the logits of at most this many targets at once
    (ft's torch trainer: a chunk, recomputed in the backward pass); None: all at once.
    Measured on the CPU with torch the estimate is within 25% of the peak RSS
    (docs/memory.md); MLX and CUDA follow the same terms but were not measured. Raises
    ValueError for an unknown method, dtype, optimizer or target, or a size below 1.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if batch_size < 1 or seq_len < 1 or lora_rank < 1:
        raise ValueError("batch_size, seq_len and lora_rank must be at least 1")
    if method == "qlora" and quant_bits not in (4, 8):
        raise ValueError(f"quant_bits is {quant_bits}: QLoRA quantizes the base to 4 or 8 bits")
    dtype = _dtype_name(dtype)
    compute = DTYPE_BYTES[dtype]
    stored = DTYPE_BYTES[_dtype_name(weights_dtype)] if weights_dtype else compute
    if not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target_fraction is {target_fraction}: a share between 0 and 1")
    targets = (
        resolve_lora_targets(shape, lora_targets) if method in ("lora", "dora", "qlora") else []
    )

    matrices = trainable_matrices(shape, method=method, lora_rank=lora_rank, lora_targets=targets)
    trainable = sum(rows * cols * count for rows, cols, count in matrices)
    params = shape.parameter_count()
    notes: list[str] = []

    # Weights. A full fine-tune in 16-bit keeps float32 master weights and, during forward and
    # backward, autocast's 16-bit copy of each; the other methods freeze the base at `dtype`.
    if method == "full":
        weights = params * (4 + (compute if compute != 4 else 0))
        if compute != 4:
            notes.append("float32 master weights plus a 16-bit working copy (mixed precision)")
    elif method == "qlora":
        block_params = shape.num_layers * sum(
            i * o for i, o in shape.linear_layer_shapes().values()
        )
        if quant_bits == 4:
            quantized = block_params * NF4_BYTES_PER_PARAM
            notes.append("base linear layers in nf4 with double-quantized absmax (bitsandbytes)")
        else:
            rows = shape.num_layers * sum(o for _, o in shape.linear_layer_shapes().values())
            quantized = block_params * INT8_BYTES_PER_PARAM + 4 * rows
            notes.append("base linear layers in int8 with a float32 scale per row (bitsandbytes)")
        weights = int(quantized + (params - block_params) * compute)
    else:
        weights = params * stored
        if stored > compute:
            # Autocast casts each frozen weight to the compute dtype; the cast is kept for the
            # backward pass (the input's gradient needs it).
            block = shape.num_layers * sum(i * o for i, o in shape.linear_layer_shapes().values())
            weights += block * compute
            notes.append(f"a {_dtype_name(weights_dtype or dtype)} base under {dtype} autocast")

    # Adapters are trained in float32 whatever the base's dtype (peft upcasts them).
    adapters = 0 if method == "full" else trainable * 4
    gradients = trainable * 4
    optimizer_bytes = _optimizer_bytes(optimizer, matrices, trainable)

    tokens = batch_size * seq_len
    activations = int(
        ALLOCATOR_FACTOR
        * tokens
        * activation_bytes_per_token(
            shape,
            method=method,
            dtype=dtype,
            lora_rank=lora_rank,
            lora_targets=targets,
            gradient_checkpointing=gradient_checkpointing,
            attention=attention,
            seq_len=attention_span or seq_len,
            lora_dropout=lora_dropout,
        )
    )
    logit_tokens = tokens * target_fraction
    if logit_rows is not None:
        logit_tokens = min(logit_tokens, logit_rows)
    logits = int(ALLOCATOR_FACTOR * logit_tokens * shape.vocab_size * logit_bytes_per_entry(dtype))
    if logit_rows is not None and logit_tokens < tokens * target_fraction:
        notes.append(f"the loss computes the logits {logit_rows:,} targets at a time")
    if gradient_checkpointing:
        notes.append("gradient checkpointing: one layer input kept per layer, one layer recomputed")

    breakdown = {
        "weights": int(weights),
        "adapters": int(adapters),
        "gradients": int(gradients),
        "optimizer": int(optimizer_bytes),
        "activations": activations,
        "logits": logits,
        "framework": FRAMEWORK_BYTES,
    }
    return MemoryEstimate(
        total_bytes=sum(breakdown.values()),
        breakdown=breakdown,
        method=method,
        batch_size=batch_size,
        seq_len=seq_len,
        dtype=dtype,
        trainable_parameters=trainable,
        notes=tuple(notes),
    )


def _dtype_name(dtype: str) -> str:
    name = _DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: choose float32, bfloat16 or float16")
    return name


def resolve_lora_targets(shape: ModelShape, targets: str | Sequence[str]) -> list[str]:
    """The module names `targets` adapts in each block: every linear layer for "all-linear"
    (as peft's all-linear: the lm_head is left out), else the names given, checked against
    `shape.linear_layer_shapes()`. Raises ValueError naming an unknown module."""
    known = shape.linear_layer_shapes()
    if isinstance(targets, str):
        if targets == "all-linear":
            return list(known)
        targets = [targets]
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise ValueError(
            f"unknown LoRA target(s) {', '.join(unknown)} for a {shape.family} model: "
            f"choose all-linear or from {', '.join(known)}"
        )
    return list(dict.fromkeys(targets))


def trainable_matrices(
    shape: ModelShape,
    *,
    method: str,
    lora_rank: int = 16,
    lora_targets: Sequence[str] = (),
) -> list[tuple[int, int, int]]:
    """The trained tensors as (rows, cols, how many): what the gradients, the optimizer state
    (Adafactor factors rows and cols) and the adapter count are computed from."""
    layers = shape.num_layers
    linear = shape.linear_layer_shapes()
    if method == "full":
        matrices = [(shape.vocab_size, shape.hidden_size, 1)]
        if not shape.tie_word_embeddings:
            matrices.append((shape.vocab_size, shape.hidden_size, 1))
        matrices += [(i, o, layers) for i, o in linear.values()]
        matrices.append((shape.hidden_size, 1, 2 * layers + 1))  # norms
        return matrices
    if method in ("lora", "dora", "qlora"):
        matrices = []
        for name in lora_targets:
            fan_in, fan_out = linear[name]
            matrices += [(lora_rank, fan_in, layers), (fan_out, lora_rank, layers)]
            if method == "dora":
                matrices.append((fan_out, 1, layers))  # the magnitude vector
        return matrices
    kv_dim = shape.num_kv_heads * shape.head_dim
    # prefix: a key and a value per virtual token and layer (peft's PrefixEncoder, no projection).
    matrices = [(VIRTUAL_TOKENS, 2 * layers * kv_dim, 1)]
    if method == "p-tuning":
        # P-tuning's prompt encoder: three hidden x hidden layers over the virtual-token table.
        hidden = shape.hidden_size
        matrices = [(VIRTUAL_TOKENS, hidden, 1), (hidden, hidden, 3)]
    return matrices


def _optimizer_bytes(optimizer: str, matrices: list[tuple[int, int, int]], trainable: int) -> int:
    if optimizer in ("adamw", "adam"):
        return 2 * 4 * trainable  # first and second moments, float32
    if optimizer == "sgd":
        return 4 * trainable  # momentum
    # Adafactor keeps a row and a column statistic per matrix, the full second moment per vector.
    return 4 * sum(
        (rows + cols if min(rows, cols) > 1 else rows * cols) * count
        for rows, cols, count in matrices
    )


def activation_bytes_per_token(
    shape: ModelShape,
    *,
    method: str = "lora",
    dtype: str = "bfloat16",
    lora_rank: int = 16,
    lora_targets: Sequence[str] = (),
    gradient_checkpointing: bool = True,
    attention: str = "sdpa",
    seq_len: int = 2048,
    lora_dropout: float = 0.05,
) -> float:
    """Bytes the forward pass keeps for the backward pass, per token, over the whole model
    (logits excluded). `attention` is "sdpa" (flash/memory-efficient kernels: no score matrix
    is kept) or "eager" (the seq_len x seq_len probabilities are kept per head)."""
    per_layer = layer_activation_bytes_per_token(
        shape,
        method=method,
        dtype=dtype,
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        attention=attention,
        seq_len=seq_len,
        lora_dropout=lora_dropout,
    )
    compute = DTYPE_BYTES[_dtype_name(dtype)]
    # The final norm keeps its float32 input; a trained lm_head keeps its input too.
    head = 4 * shape.hidden_size + (compute * shape.hidden_size if method == "full" else 0)
    if gradient_checkpointing:
        # Each checkpointed layer keeps its input; the backward pass recomputes one layer at a
        # time, so one layer's activations are alive at once.
        return shape.num_layers * compute * shape.hidden_size + per_layer + head
    return shape.num_layers * per_layer + head


def layer_activation_bytes_per_token(
    shape: ModelShape,
    *,
    method: str = "lora",
    dtype: str = "bfloat16",
    lora_rank: int = 16,
    lora_targets: Sequence[str] = (),
    attention: str = "sdpa",
    seq_len: int = 2048,
    lora_dropout: float = 0.05,
) -> float:
    """Bytes one transformer block keeps for the backward pass, per token.

    Counted from what autograd saves in the transformers implementations:
    - each of the two norms keeps its float32 input (RMSNorm upcasts; LayerNorm keeps its input);
    - SDPA keeps q, k, v (k and v at the key/value heads' width) and its output, plus a float32
      log-sum-exp per head; eager attention keeps q, the repeated k and v, and the
      probabilities, heads x seq_len per token;
    - a gated MLP keeps the gate and up projections and the activation (3 x intermediate), a
      plain MLP the first projection and the activation (2 x intermediate);
    - a frozen linear layer keeps nothing (its weight is the only thing its input-gradient
      needs); a trained one keeps its input;
    - a LoRA layer with dropout keeps the float32 dropout output, its mask and the rank-r
      projection; without dropout its input is kept once for every layer that reads it
      (q, k and v share one, as do gate and up), and the rank-r projection; DoRA also keeps
      the base layer's output for its magnitude scaling.
    """
    compute = DTYPE_BYTES[_dtype_name(dtype)]
    h, i = shape.hidden_size, shape.intermediate_size
    q = shape.num_heads * shape.head_dim
    kv = shape.num_kv_heads * shape.head_dim

    norms = 2 * 4 * h
    if attention == "sdpa":
        attn = compute * (2 * q + 2 * kv) + 4 * shape.num_heads
    elif attention == "eager":
        attn = compute * (3 * q + shape.num_heads * seq_len)
    else:
        raise ValueError(f"attention is {attention!r}: choose sdpa or eager")
    mlp = compute * (3 if shape.family in GATED_MLP else 2) * i
    total = float(norms + attn + mlp)

    if method == "full":
        # Trained linear layers keep their inputs: the attention input (shared by q, k and v),
        # the o_proj input, the MLP input (shared by gate and up), the down_proj input; the
        # norms' weights keep their normalized inputs.
        total += compute * (h + q + h + i) + compute * 2 * h
    elif method in ("lora", "dora", "qlora"):
        linear = shape.linear_layer_shapes()
        inputs: set[str] = set()
        for name in lora_targets:
            fan_in, fan_out = linear[name]
            total += 4 * lora_rank
            if lora_dropout > 0:
                total += (4 + DROPOUT_MASK_BYTES) * fan_in
            else:
                inputs.add(_INPUT_OF.get(name, name))
            if method == "dora":
                total += 4 * fan_out
        sizes = {"attention_input": h, "o_proj": q, "mlp_input": h, "down_proj": i}
        total += compute * sum(sizes.get(name, h) for name in inputs)
    return total


# Which input a LoRA layer reads: layers that share one keep it once (without dropout).
_INPUT_OF = {
    "q_proj": "attention_input",
    "k_proj": "attention_input",
    "v_proj": "attention_input",
    "gate_proj": "mlp_input",
    "up_proj": "mlp_input",
}


def logit_bytes_per_entry(dtype: str) -> float:
    """Bytes per (token, vocabulary entry) at the loss: the logits in the compute dtype, the
    float32 upcast the loss works in, and the float32 tensors of its backward pass."""
    compute = DTYPE_BYTES[_dtype_name(dtype)]
    upcast = 0 if compute == 4 else compute
    return upcast + 4 * LOGIT_FLOAT32_COPIES
