"""Checking an export: its logits on a fixed prompt against ft's own merged model.

The metric is the relative logits error `||reloaded - reference|| / ||reference||` over every
position of the prompt, which does not depend on the model's logit scale; top-1 agreement is
reported beside it. Tolerances per format are in `TOLERANCES` (and docs/export.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ft_export.types import Verification

TOLERANCES: dict[str, float] = {
    "adapter": 1e-5,  # the adapter applied by peft vs merged into the weights: rounding only
    "float32": 1e-5,
    "mlx-float32": 1e-4,  # another framework's kernels (mlx on the CPU) at float32
    "f32": 1e-5,
    "float16": 3e-3,
    "f16": 3e-3,
    "bfloat16": 2e-2,
    "bf16": 2e-2,
    "q8_0": 6e-2,
    "mlx-8": 6e-2,
    # 5- and 4-bit GGUF: SmolLM2-135M's own error on the prompt reaches 0.43 (q5_1) and 0.56
    # (q4_0); a conversion error is above 1, and every tensor is also checked on its own
    "q6_k": 0.15,
    "q5_k_m": 0.3,
    "q5_1": 0.6,
    "q5_0": 0.6,
    "q4_k_m": 0.45,
    "q4_1": 0.8,
    "q4_0": 0.8,
    "mlx-4": 0.3,
}
"""Relative logits error allowed per export type (measured errors are in docs/export.md)."""


@dataclass(frozen=True)
class Reference:
    """ft's merged model on the fixed prompt: the token ids, logits and greedy continuation."""

    ids: list[int]
    logits: np.ndarray
    greedy: list[int]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long)).logits[0]
    return out.float().numpy()


def torch_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    """The next `n` greedy tokens, one full forward pass each (no cache, no generation config:
    the same arithmetic for every reader)."""
    tokens = list(ids)
    for _ in range(n):
        tokens.append(int(np.argmax(torch_logits(model, tokens)[-1])))
    return tokens[len(ids) :]


def reference_of(model: Any, tokenizer: Any, prompt: str, greedy_tokens: int) -> Reference:
    ids = prompt_ids(tokenizer, prompt)
    return Reference(ids, torch_logits(model, ids), torch_greedy(model, ids, greedy_tokens))


def compare(
    reference: Reference,
    logits: np.ndarray,
    reader: str,
    tolerance: float,
    *,
    greedy: list[int] | None = None,
    checks: dict[str, bool] | None = None,
    notes: list[str] | None = None,
) -> Verification:
    ref = reference.logits.astype(np.float64)
    got = np.asarray(logits, dtype=np.float64)
    if got.shape != ref.shape:
        return Verification(
            reader,
            float("inf"),
            tolerance,
            float("inf"),
            0.0,
            len(reference.ids),
            checks={**(checks or {}), f"logits shape {got.shape} == {ref.shape}": False},
            notes=list(notes or []),
        )
    diff = got - ref
    error = float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))
    agreement = float(np.mean(np.argmax(got, -1) == np.argmax(ref, -1)))
    matched = None
    if greedy is not None:
        matched = 0
        for a, b in zip(greedy, reference.greedy, strict=False):
            if a != b:
                break
            matched += 1
    return Verification(
        reader=reader,
        error=error,
        tolerance=tolerance,
        max_abs=float(np.max(np.abs(diff))),
        top1_agreement=agreement,
        prompt_tokens=len(reference.ids),
        greedy_matched=matched,
        greedy_total=len(reference.greedy) if greedy is not None else None,
        checks=dict(checks or {}),
        notes=list(notes or []),
    )
