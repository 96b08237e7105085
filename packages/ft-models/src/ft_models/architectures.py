"""Which architectures ft runs, and what it does with each: the table behind
docs/architectures.md and behind the loaders' refusals.

Every architecture (ft's family name; config.json `model_type` in `model_types`) has a cell
per capability: loading, training, evaluating and generating on torch and on MLX, and
exporting to Hugging Face safetensors, MLX and GGUF. A cell is supported unless `missing`
gives the reason it is not. tests/test_architectures.py runs every cell on ft-testing's tiny
random model of the architecture (a supported cell must work and pass its check; a missing one
must fail with its reason), and docs/architectures.md must equal `architectures_markdown()`:
the table, the tests and the doc cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

BACKENDS = ("torch", "mlx")
STEPS = ("load", "train", "evaluate", "generate")
EXPORTS = ("hf", "mlx", "gguf")
CAPABILITIES: tuple[str, ...] = (
    *(f"{backend} {step}" for backend in BACKENDS for step in STEPS),
    *(f"export {fmt}" for fmt in EXPORTS),
)
"""Every column of the table: `torch load` ... `mlx generate`, `export hf|mlx|gguf`."""


@attrs.frozen
class Architecture:
    """One row of the table."""

    family: str
    """ft's name (the catalog's `family`, ft-testing's tiny model)."""
    title: str
    """The name people know it by, with an example model."""
    model_types: tuple[str, ...]
    """The config.json `model_type` values that load as this family."""
    missing: Mapping[str, str] = attrs.field(factory=dict)
    """capability -> why ft does not do it (absent: it does)."""
    notes: str = ""
    classifier: bool = False
    """An encoder that loads as a sequence classifier, not a causal LM."""

    def __attrs_post_init__(self) -> None:
        unknown = set(self.missing) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"{self.family}: unknown capabilities {sorted(unknown)}")

    def supports(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}: one of {CAPABILITIES}")
        return capability not in self.missing

    def why_not(self, capability: str) -> str | None:
        """The reason `capability` is missing, or None when it is supported."""
        return None if self.supports(capability) else self.missing[capability]


_NO_MLX_ENCODERS = "mlx-lm has no encoder (BERT-style) models"
_CLASSIFIER_EXPORT = (
    "a classifier's adapter is already in PEFT's layout (ft export writes language models)"
)
_MLX_STANDARD_WIDTH = (
    "MLX: only the standard MLP width (`n_inner` unset or 4 x `n_embd`): mlx-lm ignores "
    "`n_inner`, so ft refuses other widths on MLX."
)

ARCHITECTURES: dict[str, Architecture] = {
    a.family: a
    for a in (
        Architecture("llama", "Llama (Llama 3.2, SmolLM2)", ("llama",)),
        Architecture(
            "mistral",
            "Mistral (Mistral 7B)",
            ("mistral",),
            notes="mlx-lm runs Mistral with its Llama definition.",
        ),
        Architecture(
            "phi",
            "Phi-2 (Phi-1.5, Phi-2)",
            ("phi",),
            missing={
                "export gguf": (
                    "ft's GGUF writer does not write Phi-2 (llama.cpp's `phi2`): export `hf` "
                    "and convert with llama.cpp's convert_hf_to_gguf.py"
                ),
            },
            notes=(
                "transformers 5 writes `partial_rotary_factor` inside `rope_parameters`; ft "
                "passes it to mlx-lm (Phi-4-mini's 0.75 too), whose defaults differ."
            ),
        ),
        Architecture("phi3", "Phi-3 (Phi-3-mini, Phi-4-mini)", ("phi3",)),
        Architecture(
            "qwen2",
            "Qwen2 (Qwen2.5)",
            ("qwen2",),
            notes=(
                "transformers 5 writes `rope_theta` inside `rope_parameters`; ft passes it to "
                "mlx-lm, whose Qwen2 default (1,000,000) would otherwise change every logit."
            ),
        ),
        Architecture("qwen3", "Qwen3", ("qwen3",)),
        Architecture("gemma", "Gemma (Gemma 1)", ("gemma",)),
        Architecture(
            "gemma2",
            "Gemma 2",
            ("gemma2",),
            notes=(
                "mlx-lm's Gemma 2 attends to the whole context on every layer; ft gives the "
                "sliding layers their window when it loads the model (training, generation, "
                "evaluation). An MLX export run by mlx-lm alone is exact up to `sliding_window` "
                "tokens (4,096 in Gemma 2). MLX training applies the final logit soft-capping."
            ),
        ),
        Architecture(
            "gemma3",
            "Gemma 3, text only (gemma-3-1b)",
            ("gemma3_text",),
            notes=(
                "ft gives mlx-lm Gemma 3's `sliding_window_pattern` and local rope base from "
                "transformers 5's `layer_types` and `rope_parameters`, and the embedding scale "
                "transformers uses in float32 (mlx-lm rounds sqrt(width) to bfloat16). The "
                "multimodal Gemma 3 (`model_type` gemma3, 4B and up) is not loaded."
            ),
        ),
        Architecture(
            "gpt2",
            "GPT-2",
            ("gpt2",),
            notes=(
                f"{_MLX_STANDARD_WIDTH} ft strips the `transformer.` prefix that transformers "
                "writes and fills in `n_ctx`, which mlx-lm requires. Packing is refused (learned "
                "absolute positions). torch trains GPT-2 with its config's dropout (0.1 in the "
                "released models); mlx-lm's GPT-2 has none."
            ),
        ),
        Architecture(
            "gptj",
            "GPT-J",
            ("gptj",),
            missing={
                "export gguf": ("llama.cpp has no GPT-J model: no converter and no compute graph"),
            },
            notes=_MLX_STANDARD_WIDTH,
        ),
        Architecture(
            "bert",
            "BERT (sequence classification)",
            ("bert", "roberta", "distilbert"),
            classifier=True,
            missing={
                "torch generate": "an encoder classifier labels text, it does not generate",
                "mlx load": _NO_MLX_ENCODERS,
                "mlx train": _NO_MLX_ENCODERS,
                "mlx evaluate": _NO_MLX_ENCODERS,
                "mlx generate": _NO_MLX_ENCODERS,
                "export hf": _CLASSIFIER_EXPORT,
                "export mlx": _CLASSIFIER_EXPORT,
                "export gguf": _CLASSIFIER_EXPORT,
            },
            notes=(
                "Loads with `AutoModelForSequenceClassification` (`model.num_labels`); evaluating "
                "scores accuracy and macro F1. RoBERTa and DistilBERT load through the same "
                "classes but have no tiny model in the tests."
            ),
        ),
    )
}
"""Every architecture ft loads, by family."""

TYPE_TO_FAMILY: dict[str, str] = {
    model_type: a.family for a in ARCHITECTURES.values() for model_type in a.model_types
}
"""config.json `model_type` -> family, for the architectures ft loads."""


def capability_label(capability: str) -> str:
    """The column header of `capability`: `torch load`, `MLX train`, `export GGUF`."""
    where, what = capability.split(" ")
    names = {"mlx": "MLX", "hf": "HF", "gguf": "GGUF"}
    return f"{names.get(where, where)} {names.get(what, what)}"


def architectures_markdown() -> str:
    """docs/architectures.md: the table, its reasons and notes, as Markdown."""
    header = " | ".join(["architecture", "model_type", *map(capability_label, CAPABILITIES)])
    lines = [
        "# Architectures",
        "",
        "What ft does with each model architecture, on each backend. Generated from",
        "`ft_models.architectures.ARCHITECTURES`: tests/test_architectures.py runs every cell",
        "on a tiny random model of the architecture (2 layers, width 64) through ft's own",
        "functions (`ft train` two steps, `ft evaluate`, `ft generate`, `ft export` with its",
        'check), and checks that every "no" fails for the reason given below. A test checks',
        "that this file equals the table, and one that every catalog model's architecture loads.",
        "",
        f"| {header} |",
        "| --- | --- | " + " | ".join("---" for _ in CAPABILITIES) + " |",
    ]
    for arch in ARCHITECTURES.values():
        cells = ["yes" if arch.supports(c) else "no" for c in CAPABILITIES]
        types = ", ".join(arch.model_types)
        lines.append(f"| {arch.title} | {types} | " + " | ".join(cells) + " |")
    lines += ["", "## Why not", ""]
    for arch in ARCHITECTURES.values():
        for capability in CAPABILITIES:
            reason = arch.why_not(capability)
            if reason:
                lines.append(f"- {arch.title}, {capability}: {reason}.")
    lines += ["", "## Notes", ""]
    lines += [f"- {a.title}: {a.notes}" for a in ARCHITECTURES.values() if a.notes]
    lines += [
        "",
        "torch loads causal LMs with `AutoModelForCausalLM` on cuda, mps or cpu, in float32,",
        "bfloat16 or float16. MLX loads through mlx-lm's model definitions, on the Metal GPU on",
        "Apple Silicon and on the CPU elsewhere, with the per-architecture changes of",
        "`ft_models.mlx_arch`. Weights are read from safetensors only (a folder with only",
        "`pytorch_model.bin` is refused); sharded folders are read through",
        "`model.safetensors.index.json`. Training is LoRA in these tests; the other methods",
        "are the trainers' own (docs/training.md).",
        "",
        "## Checking MLX against torch",
        "",
        "`ft_models.convert.check_logits(folder)` runs the same 32 token ids through the torch",
        "and the MLX model in float32 and raises `ConversionError` when the logits differ by",
        "more than the tolerance: 1e-4 x max(1, largest |logit|), absolute, unless given.",
        "`convert_to_mlx(folder, output)` writes an MLX folder only after that check passes.",
        "",
        "| model | largest difference | tolerance |",
        "| --- | --- | --- |",
        "| tiny random models above (2 layers, width 64), each | 5.7e-7 or less | 1e-4 to 1.5e-4 |",
        "| tiny Gemma 2 with mlx-lm's own class (no sliding window; 32 tokens, window 24) "
        "| 0.47 | 1e-4: caught |",
        "| tiny Gemma 3 at width 72 with mlx-lm's bfloat16 embedding scale (ft's: 7.4e-7) "
        "| 4.5e-4 | 1e-4: caught |",
        "| SmolLM2-135M-Instruct (30 layers) | 1.9e-4 (mean 2.3e-5) | 3.6e-3 |",
        "| SmolLM2-135M read by mlx-lm alone (rope_theta 1e4, not 1e5) | 7.5 | 3.6e-3: caught |",
        "",
    ]
    return "\n".join(lines)
