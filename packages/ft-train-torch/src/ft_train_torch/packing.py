"""From ft-data's numpy batches to model inputs, and the losses.

A packed row holds several examples one after another (`segment_ids` 1..k, 0 on padding;
`position_ids` restarting at 0 for each). Attention must stay inside each example: the model
runs with ft's attention implementation (`ft_train_torch.attention`), which attends to each
example on its own, given the batch's layout (`segments`) as a forward keyword argument. No
`(length x length)` mask is ever built, so memory grows linearly with the row's length.

The loss is a sum of token cross-entropies, never a mean: the loop divides by the number of
trained tokens of the whole optimizer step (every micro-batch, every process), so accumulation
and data parallelism give the same update as one big batch. A label is predicted from the
token before it; a label whose token starts another example (or padding) is not a target, so a
packed row trains exactly the targets its examples would train unpacked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from ft_data.batches import IGNORE_INDEX, Batch, is_packed, shifted_targets, target_count
from ft_train_core.plan import LOSS_CHUNK_ROWS
from ft_train_torch.attention import Segments, register
from ft_train_torch.head_loss import head_cross_entropy


def trained_tokens(batch: Batch, task: str = "causal-lm") -> int:
    """How many targets `batch` trains: the loss of the batch is summed over these."""
    if task == "sequence-classification":
        # One target a row; a process' empty share of a short batch is labelled IGNORE_INDEX.
        return int((np.asarray(batch["labels"]) != IGNORE_INDEX).sum())
    return target_count(batch)


def model_inputs(
    batch: Batch,
    device: torch.device,
    *,
    prompt_learning: bool = False,
    task: str = "causal-lm",
) -> dict[str, torch.Tensor | Segments]:
    """The keyword arguments of the model's forward for `batch`.

    A causal LM gets the batch's position ids and its layout of examples (`segments`), which
    ft's attention (`attention.ATTENTION`, see `use_packed_attention`) reads: packed or not,
    attention stays inside each example, at a memory cost linear in the row's length. Prefix
    tuning and P-tuning add virtual tokens that peft fits to a 2D mask only, so they take the
    2D padding mask, no position ids and no packed rows.
    """
    input_ids = torch.as_tensor(batch["input_ids"], device=device)
    inputs = {"input_ids": input_ids}
    if task == "sequence-classification":
        inputs["attention_mask"] = torch.as_tensor(batch["attention_mask"], device=device)
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = torch.as_tensor(batch["token_type_ids"], device=device)
        return inputs
    if prompt_learning:
        if is_packed(batch):
            raise ValueError(
                "prefix tuning and P-tuning cannot train on packed rows: set data.packing: false"
            )
        inputs["attention_mask"] = torch.as_tensor(batch["attention_mask"], device=device)
        return inputs
    inputs["position_ids"] = torch.as_tensor(batch["position_ids"], device=device)
    inputs["segments"] = Segments.of(batch["segment_ids"], device)
    return inputs


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a transformers causal LM (or the peft model around one) to ft's per-example
    attention (`ft_train_torch.attention`), which `model_inputs`' `segments` drive."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(register())


def causal_lm_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The summed cross-entropy of `batch`'s targets (fp32, whatever the logits' dtype)."""
    targets = torch.as_tensor(shifted_targets(batch), device=logits.device)
    length = batch["input_ids"].shape[1]
    if logits.shape[1] > length:  # P-tuning puts its virtual tokens in front
        logits = logits[:, -length:]
    logits = logits[:, :-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def trained_positions(batch: Batch) -> np.ndarray:
    """`(batch, length)` booleans: True at the positions whose next token is a target."""
    targets = shifted_targets(batch)
    positions = np.zeros(batch["input_ids"].shape, dtype=bool)
    positions[:, :-1] = targets != IGNORE_INDEX
    return positions


LOSS_CHUNK = LOSS_CHUNK_ROWS
"""Target rows whose logits `OutputAtTargets` computes at once in chunked mode (the plan's
memory estimate counts the same, `ft_train_core.plan.LOSS_CHUNK_ROWS`)."""

# Config attributes of architectures that transform the output layer's logits in ways the
# chunked loss does not repeat (it repeats `final_logit_softcapping`): those keep the logits.
_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "output_multiplier_scale")


class OutputAtTargets:
    """Makes a causal LM compute logits only where they are trained, a chunk at a time.

    The output layer (`get_output_embeddings()`, the `lm_head`) is the largest matrix of a
    small model (SmolLM2-135M: 49,152 x 576 of its 135M parameters), and its logits, fp32 and
    vocabulary-wide, the largest activation. Prompt tokens and padding have no target, so
    their logits are wasted work. While `at(positions)` is active, a forward pre-hook on the
    output layer keeps only the hidden states at `positions` (row-major).

    Without `chunked`, the model then returns logits of shape `(rows, vocab)` whose first rows
    are the targets', which `selected_lm_loss` scores. With `chunked`, the hook keeps those
    hidden states (`hidden`) and lets the model compute one row of logits only; `chunked_loss`
    then computes the loss `LOSS_CHUNK` rows at a time, each chunk's logits recomputed in the
    backward pass (`torch.utils.checkpoint`) instead of kept (a step with one chunk keeps it:
    the same peak, no recomputation): the logits of a step cost one chunk's memory (SmolLM2:
    about 0.6 GB), not all its targets' (4 packed rows of 2,048 tokens: about 6 GB). The forward still goes through the model (and any DDP wrapper) as
    usual. Chunking needs the output layer callable after the model's forward, so FSDP (whose
    weights are sharded again by then) and `torch.compile` keep the logits.

    The number of rows is rounded up to one of four sizes per octave (`padded_count`), the
    extra rows repeating the last position: the CPU's bfloat16 matrix library (oneDNN) keeps a
    kernel, with its own copy of the weights, for every shape it meets, so a count that
    changes at every step grew a run's memory by ~16 MB a step for SmolLM2's output layer.
    """

    def __init__(self, model: torch.nn.Module, *, chunked: bool = False) -> None:
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError("the model has no output layer to select positions for")
        config = getattr(model, "config", None)
        self.head = head
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.chunked = chunked and not any(getattr(config, a, None) for a in _LOGIT_TRANSFORMS)
        self.index: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None
        self._calling = False
        self.handle = head.register_forward_pre_hook(self._select)

    def _select(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.index is None or self._calling:
            return None
        hidden = args[0]
        selected = hidden.reshape(-1, hidden.shape[-1])[self.index]
        if not self.chunked:
            return (selected, *args[1:])
        self.hidden = selected
        return (selected[:1], *args[1:])

    @contextlib.contextmanager
    def at(self, positions: np.ndarray, device: torch.device) -> Iterator[None]:
        index = np.flatnonzero(positions)
        if len(index) and not self.chunked:
            fill = np.full(padded_count(len(index)) - len(index), index[-1])
            index = np.concatenate([index, fill])
        self.index = torch.as_tensor(index, device=device)
        try:
            yield
        finally:
            self.index = None

    def chunked_loss(self, batch: Batch, *, per_token: bool = False) -> torch.Tensor:
        """The summed cross-entropy of the targets of `batch`, from the hidden states the
        last forward pass under `at` kept, `LOSS_CHUNK` rows at a time; with `per_token`, each
        target's cross-entropy (row-major), as preference losses need."""
        hidden, self.hidden = self.hidden, None
        if hidden is None:
            raise RuntimeError("chunked_loss needs a forward pass under OutputAtTargets.at")
        targets = shifted_targets(batch)
        wanted = torch.as_tensor(targets[targets != IGNORE_INDEX], device=hidden.device)
        # Zero, but through the graph: a process whose share of the batch has no targets still
        # gives every trainable weight its (zero) gradient, as DDP expects of each process.
        total = hidden.sum(dtype=torch.float32) * 0.0
        pieces = []
        # One chunk only: its logits are the step's largest activation either way (computed
        # in the forward pass, or again in the backward one), so keeping them costs no more
        # at the peak and saves recomputing the output layer (~5% of a SmolLM2 LoRA step).
        recompute = torch.is_grad_enabled() and len(wanted) > LOSS_CHUNK
        for start in range(0, len(wanted), LOSS_CHUNK):
            rows = hidden[start : start + LOSS_CHUNK]
            count = len(rows)
            pad = min(padded_count(count), LOSS_CHUNK) - count
            if pad:
                rows = torch.cat([rows, rows[-1:].expand(pad, -1)])
            chunk = wanted[start : start + count]
            if recompute:
                piece = torch.utils.checkpoint.checkpoint(
                    self._chunk_loss, rows, chunk, per_token, use_reentrant=False
                )
            else:
                piece = self._chunk_loss(rows, chunk, per_token)
            if per_token:
                pieces.append(piece)
            else:
                total = total + piece
        if per_token:
            return torch.cat(pieces) + total if pieces else total.reshape(1)[:0]
        return total

    def _chunk_loss(
        self, rows: torch.Tensor, wanted: torch.Tensor, per_token: bool = False
    ) -> torch.Tensor:
        if type(self.head) is torch.nn.Linear and not self.softcap:
            # A plain output layer: its logits and their cross-entropy in one function,
            # without float32 copies of the logits (ft_train_torch.head_loss).
            losses = head_cross_entropy(self.head, rows, wanted)
            return losses if per_token else losses.sum()
        self._calling = True
        try:
            logits = self.head(rows)
        finally:
            self._calling = False
        logits = logits[: len(wanted)].float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits, wanted, reduction="none" if per_token else "sum")

    def remove(self) -> None:
        self.handle.remove()


def padded_count(count: int) -> int:
    """`count` rounded up to one of four sizes per octave (at most 25% more; 64 at least):
    64, 80, 96, 112, 128, 160, 192, 224, 256, 320, ..."""
    if count <= 64:
        return 64
    step = 1 << max(count.bit_length() - 3, 0)
    return -(-count // step) * step


def selected_lm_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """`causal_lm_loss` for logits computed at `trained_positions(batch)` only (row-major; the
    rows after the targets' are `OutputAtTargets`' padding)."""
    targets = shifted_targets(batch)
    wanted = torch.as_tensor(targets[targets != IGNORE_INDEX], device=logits.device)
    return F.cross_entropy(logits[: len(wanted)].float(), wanted, reduction="sum")


def selected_token_losses(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Each target's cross-entropy (row-major), from logits computed at
    `trained_positions(batch)` only, as `selected_lm_loss` sums them."""
    targets = shifted_targets(batch)
    wanted = torch.as_tensor(targets[targets != IGNORE_INDEX], device=logits.device)
    return F.cross_entropy(logits[: len(wanted)].float(), wanted, reduction="none")


def causal_token_losses(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Each target's cross-entropy (row-major), from logits at every position (prompt
    learning's virtual tokens cut off), as `causal_lm_loss` sums them."""
    targets = shifted_targets(batch)
    length = batch["input_ids"].shape[1]
    if logits.shape[1] > length:
        logits = logits[:, -length:]
    rows, columns = np.nonzero(targets != IGNORE_INDEX)
    picked = logits[:, :-1][torch.as_tensor(rows), torch.as_tensor(columns)].float()
    wanted = torch.as_tensor(targets[rows, columns], device=logits.device)
    return F.cross_entropy(picked, wanted, reduction="none")


def classification_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The summed cross-entropy of a sequence classifier's `logits` against `batch["labels"]`
    (one class index per row)."""
    labels = torch.as_tensor(batch["labels"], device=logits.device).long().reshape(-1)
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def classification_correct(logits: torch.Tensor, batch: Batch) -> int:
    """How many rows of `batch` the classifier's `logits` put in their labelled class."""
    labels = torch.as_tensor(batch["labels"], device=logits.device).long().reshape(-1)
    return int((logits.argmax(-1) == labels).sum())
