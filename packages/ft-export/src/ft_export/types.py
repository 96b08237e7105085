"""The plain data exporters take and give: what to export, how, and what came out of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Progress = Callable[[str, int, int], None]
"""`progress(step, done, total)`: called as a long step advances (total 0: unknown)."""

DEFAULT_PROMPT = "The capital of France is Paris. What is the capital of Italy? The capital of"
"""The fixed prompt every export is checked on."""


def no_progress(step: str, done: int, total: int) -> None:
    """A `Progress` that shows nothing."""


class ExportError(ValueError):
    """An export that cannot be made, with what to do instead."""


class VerificationError(ExportError):
    """An export was written but its check failed; `result` holds the export and its report."""

    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ExportSource:
    """What to export: a base model folder, and the adapters to apply to it (none for a plain
    or fully fine-tuned model)."""

    base: Path
    """A Hugging Face safetensors model folder."""
    adapters: tuple[Path, ...] = ()
    """PEFT adapter folders. Two or more are combined into one (see `combination`)."""
    adapter_weights: tuple[float, ...] | None = None
    """One weight per adapter when combining; default 1/n each."""
    combination: str = "linear"
    """peft's `add_weighted_adapter` combination: linear, ties, dare_ties, dare_linear, ..."""
    density: float = 0.5
    """The fraction of weights TIES/DARE keep."""
    chat_template: str | None = None
    """The chat template used in training; None: the tokenizer's own."""
    name: str | None = None
    """The model's name in the exported metadata (GGUF general.name, Modelfile)."""
    quantized_base: bool = False
    """The adapter was trained on a 4-bit (QLoRA) base: merging goes into the full-precision
    weights of `base`, and the export says so."""

    @property
    def display_name(self) -> str:
        return self.name or (self.adapters[0].name if self.adapters else self.base.name)


@dataclass(frozen=True)
class ExportOptions:
    """How to export."""

    dtype: str | None = None
    """float32, float16 or bfloat16: the weights of `hf`/`mlx` exports; None: the dtype the
    base model is saved in (`saved_dtype`)."""
    quant: str | None = None
    """gguf: f32, f16 (default), bf16, q8_0, q6_k, q5_k_m, q5_1, q5_0, q4_k_m, q4_1, q4_0;
    mlx: 4 or 8 (bits)."""
    verify: bool = True
    check: str = "quick"
    """How deep the check of a GGUF export goes: `quick` (every tensor read back with gguf-py,
    one forward pass on the prompt) or `full` (transformers' own GGUF loader, tokenizer rebuilt
    from the file, greedy tokens). Other formats are always reloaded whole."""
    max_shard_size: str = "5GB"
    prompt: str = DEFAULT_PROMPT
    greedy_tokens: int = 8
    """How many greedy tokens an f16/f32 GGUF must reproduce."""


@dataclass
class Verification:
    """The check of one export: reloaded by `reader`, compared with ft's merged model."""

    reader: str
    error: float
    """Relative logits error: ||reloaded - reference|| / ||reference|| over the prompt."""
    tolerance: float
    max_abs: float
    top1_agreement: float
    """The fraction of prompt positions whose most likely next token agrees."""
    prompt_tokens: int
    greedy_matched: int | None = None
    greedy_total: int | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    """Other checks by name (`chat template kept`, `tokenizer ids`)."""
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None
    """How long the check took, apart from writing the export (None: not measured apart)."""

    @property
    def passed(self) -> bool:
        greedy_ok = self.greedy_total is None or self.greedy_matched == self.greedy_total
        return self.error <= self.tolerance and greedy_ok and all(self.checks.values())

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        parts = [
            f"{verdict}: reloaded with {self.reader}; relative logits error {self.error:.2e} "
            f"(tolerance {self.tolerance:.2g}), top-1 agreement {self.top1_agreement:.0%} "
            f"over {self.prompt_tokens} tokens"
        ]
        if self.greedy_total is not None:
            parts.append(f"greedy tokens {self.greedy_matched}/{self.greedy_total} identical")
        for name, ok in self.checks.items():
            parts.append(f"{name}: {'yes' if ok else 'NO'}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reader": self.reader,
            "passed": self.passed,
            "relative_logits_error": self.error,
            "tolerance": self.tolerance,
            "max_abs_logits_difference": self.max_abs,
            "top1_agreement": self.top1_agreement,
            "prompt_tokens": self.prompt_tokens,
            "greedy_matched": self.greedy_matched,
            "greedy_total": self.greedy_total,
            "checks": self.checks,
            "notes": self.notes,
            "seconds": self.seconds,
        }


@dataclass
class ExportResult:
    """What an exporter wrote."""

    format: str
    path: Path
    """The folder (or, for a single file, the file) the export is in."""
    files: list[Path]
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None
    """How long writing the export took, its check's time not included."""


@runtime_checkable
class Exporter(Protocol):
    """One export format, registered in the entry point group `ft.exporters`."""

    name: str
    description: str

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        """Write `source` into the folder `out` (created; must not hold an earlier export) and,
        when `options.verify`, check it. Raises `ExportError`, or `VerificationError` when the
        written export fails its check."""
        ...
