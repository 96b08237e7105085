"""The catalog: known-good models under short aliases (`ft models list`).

Each entry is data: the Hub repo, the licence, whether it is a chat (instruct) model, whether
the repo is gated, and the model's shape written out from its config.json. Parameter counts and
context lengths are computed from the shape, so they cannot drift from it. Memory per training
method comes from the estimator in `ft_models.memory`.
"""

from __future__ import annotations

import difflib
from typing import Any

import attrs

from ft_models.embedded import EMBEDDED_ALIAS, EMBEDDED_REPO_ID
from ft_models.shape import ModelShape

DEFAULT_ALIAS = EMBEDDED_ALIAS
METHODS = ("lora", "qlora", "full")
"""The training methods the catalog shows memory for."""


@attrs.frozen
class CatalogEntry:
    """A model ft knows works, and what it needs."""

    alias: str
    repo_id: str
    shape: ModelShape
    licence: str
    chat: bool
    """True for a chat (instruct) model, False for a base model."""
    notes: str = ""
    gated: bool = False
    """The Hub repo asks you to accept its terms before it serves the files."""
    embedded: bool = False
    """ft carries this model (as a GGUF file), so it works offline without a download."""
    task: str = "causal-lm"

    @property
    def family(self) -> str:
        return self.shape.family

    @property
    def parameters(self) -> int:
        return self.shape.parameter_count()

    @property
    def context_length(self) -> int:
        return self.shape.max_position_embeddings

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "alias": self.alias,
            "repo_id": self.repo_id,
            "family": self.family,
            "parameters": self.parameters,
            "context_length": self.context_length,
            "licence": self.licence,
            "chat": self.chat,
            "gated": self.gated,
            "embedded": self.embedded,
            "task": self.task,
            "notes": self.notes,
        }


def _shape(
    family: str,
    *,
    vocab: int,
    hidden: int,
    layers: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    context: int,
    tied: bool,
    head_dim: int | None = None,
) -> ModelShape:
    return ModelShape(
        family=family,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        intermediate_size=intermediate,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        tie_word_embeddings=tied,
        max_position_embeddings=context,
    )


_SMOLLM2 = {"vocab": 49152, "context": 8192, "tied": True}
_QWEN = {"vocab": 151936, "context": 32768}
_QWEN3 = {"vocab": 151936, "context": 40960, "head_dim": 128}
_LLAMA32 = {"vocab": 128256, "context": 131072, "tied": True, "kv_heads": 8}
_GATED_NOTE = "gated: accept the terms on its Hub page, then set hf_token"

CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        EMBEDDED_ALIAS,
        EMBEDDED_REPO_ID,
        _shape("llama", hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, **_SMOLLM2),
        "apache-2.0",
        chat=True,
        embedded=True,
        notes="the default; ships with ft (GGUF), works offline",
    ),
    CatalogEntry(
        "smollm2-360m",
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        _shape("llama", hidden=960, layers=32, intermediate=2560, heads=15, kv_heads=5, **_SMOLLM2),
        "apache-2.0",
        chat=True,
    ),
    CatalogEntry(
        "smollm2-1.7b",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        _shape(
            "llama", hidden=2048, layers=24, intermediate=8192, heads=32, kv_heads=32, **_SMOLLM2
        ),
        "apache-2.0",
        chat=True,
    ),
    CatalogEntry(
        "qwen2.5-0.5b",
        "Qwen/Qwen2.5-0.5B-Instruct",
        _shape(
            "qwen2",
            hidden=896,
            layers=24,
            intermediate=4864,
            heads=14,
            kv_heads=2,
            tied=True,
            **_QWEN,
        ),
        "apache-2.0",
        chat=True,
    ),
    CatalogEntry(
        "qwen2.5-1.5b",
        "Qwen/Qwen2.5-1.5B-Instruct",
        _shape(
            "qwen2",
            hidden=1536,
            layers=28,
            intermediate=8960,
            heads=12,
            kv_heads=2,
            tied=True,
            **_QWEN,
        ),
        "apache-2.0",
        chat=True,
    ),
    CatalogEntry(
        "qwen2.5-3b",
        "Qwen/Qwen2.5-3B-Instruct",
        _shape(
            "qwen2",
            hidden=2048,
            layers=36,
            intermediate=11008,
            heads=16,
            kv_heads=2,
            tied=True,
            **_QWEN,
        ),
        "qwen-research",
        chat=True,
        notes="Qwen research licence: non-commercial use",
    ),
    CatalogEntry(
        "qwen2.5-7b",
        "Qwen/Qwen2.5-7B-Instruct",
        _shape(
            "qwen2",
            vocab=152064,
            hidden=3584,
            layers=28,
            intermediate=18944,
            heads=28,
            kv_heads=4,
            tied=False,
            context=32768,
        ),
        "apache-2.0",
        chat=True,
    ),
    CatalogEntry(
        "qwen3-0.6b",
        "Qwen/Qwen3-0.6B",
        _shape(
            "qwen3",
            hidden=1024,
            layers=28,
            intermediate=3072,
            heads=16,
            kv_heads=8,
            tied=True,
            **_QWEN3,
        ),
        "apache-2.0",
        chat=True,
        notes="thinking and non-thinking chat modes",
    ),
    CatalogEntry(
        "qwen3-1.7b",
        "Qwen/Qwen3-1.7B",
        _shape(
            "qwen3",
            hidden=2048,
            layers=28,
            intermediate=6144,
            heads=16,
            kv_heads=8,
            tied=True,
            **_QWEN3,
        ),
        "apache-2.0",
        chat=True,
        notes="thinking and non-thinking chat modes",
    ),
    CatalogEntry(
        "qwen3-4b",
        "Qwen/Qwen3-4B",
        _shape(
            "qwen3",
            hidden=2560,
            layers=36,
            intermediate=9728,
            heads=32,
            kv_heads=8,
            tied=True,
            **_QWEN3,
        ),
        "apache-2.0",
        chat=True,
        notes="thinking and non-thinking chat modes",
    ),
    CatalogEntry(
        "qwen3-8b",
        "Qwen/Qwen3-8B",
        _shape(
            "qwen3",
            hidden=4096,
            layers=36,
            intermediate=12288,
            heads=32,
            kv_heads=8,
            tied=False,
            **_QWEN3,
        ),
        "apache-2.0",
        chat=True,
        notes="thinking and non-thinking chat modes",
    ),
    CatalogEntry(
        "llama3.2-1b",
        "meta-llama/Llama-3.2-1B-Instruct",
        _shape(
            "llama", hidden=2048, layers=16, intermediate=8192, heads=32, head_dim=64, **_LLAMA32
        ),
        "llama3.2",
        chat=True,
        gated=True,
        notes=_GATED_NOTE,
    ),
    CatalogEntry(
        "llama3.2-3b",
        "meta-llama/Llama-3.2-3B-Instruct",
        _shape(
            "llama", hidden=3072, layers=28, intermediate=8192, heads=24, head_dim=128, **_LLAMA32
        ),
        "llama3.2",
        chat=True,
        gated=True,
        notes=_GATED_NOTE,
    ),
    CatalogEntry(
        "mistral-7b",
        "mistralai/Mistral-7B-Instruct-v0.3",
        _shape(
            "mistral",
            vocab=32768,
            hidden=4096,
            layers=32,
            intermediate=14336,
            heads=32,
            kv_heads=8,
            tied=False,
            context=32768,
        ),
        "apache-2.0",
        chat=True,
        gated=True,
        notes="gated, granted at once: accept the terms on its Hub page, then set hf_token",
    ),
    CatalogEntry(
        "phi3-mini",
        "microsoft/Phi-3-mini-4k-instruct",
        _shape(
            "phi3",
            vocab=32064,
            hidden=3072,
            layers=32,
            intermediate=8192,
            heads=32,
            kv_heads=32,
            tied=False,
            context=4096,
        ),
        "mit",
        chat=True,
        notes="4k context",
    ),
    CatalogEntry(
        "phi4-mini",
        "microsoft/Phi-4-mini-instruct",
        _shape(
            "phi3",
            vocab=200064,
            hidden=3072,
            layers=32,
            intermediate=8192,
            heads=24,
            kv_heads=8,
            tied=True,
            context=131072,
        ),
        "mit",
        chat=True,
    ),
    CatalogEntry(
        "gemma2-2b",
        "google/gemma-2-2b-it",
        _shape(
            "gemma2",
            vocab=256000,
            hidden=2304,
            layers=26,
            intermediate=9216,
            heads=8,
            kv_heads=4,
            head_dim=256,
            tied=True,
            context=8192,
        ),
        "gemma",
        chat=True,
        gated=True,
        notes=_GATED_NOTE,
    ),
    CatalogEntry(
        "gemma3-1b",
        "google/gemma-3-1b-it",
        _shape(
            "gemma3",
            vocab=262144,
            hidden=1152,
            layers=26,
            intermediate=6912,
            heads=4,
            kv_heads=1,
            head_dim=256,
            tied=True,
            context=32768,
        ),
        "gemma",
        chat=True,
        gated=True,
        notes=_GATED_NOTE,
    ),
    CatalogEntry(
        "gpt2",
        "openai-community/gpt2",
        _shape(
            "gpt2",
            vocab=50257,
            hidden=768,
            layers=12,
            intermediate=3072,
            heads=12,
            kv_heads=12,
            tied=True,
            context=1024,
        ),
        "mit",
        chat=False,
        notes="base model, no chat template; small and well understood",
    ),
    CatalogEntry(
        "bert-base",
        "google-bert/bert-base-uncased",
        _shape(
            "bert",
            vocab=30522,
            hidden=768,
            layers=12,
            intermediate=3072,
            heads=12,
            kv_heads=12,
            tied=True,
            context=512,
        ),
        "apache-2.0",
        chat=False,
        task="sequence-classification",
        notes="encoder for classification (model.task: sequence-classification), not generation",
    ),
)

_BY_ALIAS = {entry.alias: entry for entry in CATALOG}
_BY_REPO = {entry.repo_id.lower(): entry for entry in CATALOG}


def find_entry(name: str) -> CatalogEntry | None:
    """The entry whose alias is `name` (any case), or None."""
    return _BY_ALIAS.get(name.strip().lower())


def entry_for_repo(repo_id: str) -> CatalogEntry | None:
    """The entry for a Hub repo id (any case), or None."""
    return _BY_REPO.get(repo_id.strip().lower())


def similar_aliases(name: str, n: int = 5) -> list[str]:
    """Catalog aliases that look like `name` (for "did you mean")."""
    name = name.strip().lower()
    candidates = {
        **{e.alias: e.alias for e in CATALOG},
        **{e.repo_id.lower(): e.alias for e in CATALOG},
    }
    close = difflib.get_close_matches(name, list(candidates), n=n * 2, cutoff=0.5)
    # Also the aliases that contain what was typed, or its first part ("qwen" -> every Qwen).
    stem = name.split("/")[-1].split("-")[0]
    close += [e.alias for e in CATALOG if stem and len(stem) >= 3 and stem in e.alias]
    seen: list[str] = []
    for found in close:
        alias = candidates.get(found, found)
        if alias not in seen:
            seen.append(alias)
    return seen[:n]


def training_memory(
    shape: ModelShape,
    methods: tuple[str, ...] = METHODS,
    *,
    batch_size: int = 1,
    seq_len: int = 2048,
) -> dict[str, int | None]:
    """Estimated peak training memory in bytes for each of `methods` (the estimator's defaults
    otherwise: bf16, LoRA r=16 on every linear layer, 4-bit QLoRA, gradient checkpointing,
    AdamW). None for a method when the estimator is not available."""
    try:
        from ft_models.memory import estimate_training_memory
    except ImportError:
        return dict.fromkeys(methods)
    return {
        method: estimate_training_memory(
            shape, method=method, batch_size=batch_size, seq_len=seq_len
        ).total_bytes
        for method in methods
    }


def format_parameters(count: int | None) -> str:
    """135M, 1.7B, ..."""
    if count is None:
        return "?"
    if count >= 999_500_000:
        return f"{count / 1e9:.1f}B"
    if count >= 999_500:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K"


def parse_parameters(text: str) -> int:
    """`2B`, `500M`, `1.5b`, `7e9` -> a count. Raises ValueError with the accepted forms."""
    cleaned = text.strip().upper().replace("_", "").replace(",", "")
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}.get(cleaned[-1:], 1)
    number = cleaned[:-1] if scale != 1 else cleaned
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a parameter count: write it like 500M, 1.5B or 7e9"
        ) from None
    if value <= 0:
        raise ValueError(f"{text!r}: a parameter count must be positive")
    return int(value * scale)


# -- the docs table ---------------------------------------------------------------------------

DOCS_START = "<!-- catalog table: generated from ft_models.catalog.catalog_markdown() -->"
DOCS_END = "<!-- end of catalog table -->"


def catalog_markdown() -> str:
    """The catalog as a Markdown table (docs/models.md embeds it between DOCS_START and
    DOCS_END)."""
    lines = [
        "| alias | Hub repo | family | parameters | context | licence | kind | notes |",
        "| --- | --- | --- | ---: | ---: | --- | --- | --- |",
    ]
    for e in CATALOG:
        kind = "chat" if e.chat else ("encoder" if e.task != "causal-lm" else "base")
        lines.append(
            f"| `{e.alias}` | [{e.repo_id}](https://huggingface.co/{e.repo_id}) | {e.family} "
            f"| {format_parameters(e.parameters)} | {e.context_length:,} | {e.licence} | {kind} "
            f"| {e.notes} |"
        )
    return "\n".join(lines) + "\n"


def update_docs_section(text: str) -> str:
    """`text` (a Markdown document) with the catalog table between the markers replaced by
    the current `catalog_markdown()`."""
    start, end = text.index(DOCS_START), text.index(DOCS_END)
    return text[: start + len(DOCS_START)] + "\n\n" + catalog_markdown() + "\n" + text[end:]
