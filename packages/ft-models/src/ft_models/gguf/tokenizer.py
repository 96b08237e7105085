"""Turn a GGUF file's tokenizer metadata into Hugging Face tokenizer files.

A GGUF holds its tokenizer as metadata (`tokenizer.ggml.model`, tokens, merges, token types,
special token ids, `tokenizer.chat_template`). transformers already knows how to rebuild a fast
tokenizer from those for every tokenizer family llama.cpp writes (byte-level BPE, sentencepiece
BPE, unigram, and the per-architecture quirks of Gemma and Phi-3), so this module hands the
metadata to the same converter `AutoTokenizer.from_pretrained(..., gguf_file=...)` uses and
saves the result. That converter needs transformers and tokenizers, but not torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_config import atomic_write_text
from ft_models.gguf.reader import GGUFError, GGUFHeader

INSTALL_HINT = 'pip install "ft-models[torch]"'


def has_tokenizer(header: GGUFHeader) -> bool:
    return "tokenizer.ggml.model" in header.metadata


def write_tokenizer(header: GGUFHeader, folder: Path, context_length: int | None) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and
    chat_template.jinja into `folder`; return the names written."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            _SPECIAL_TOKENS,
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError as error:
        raise ImportError(
            f"Building the tokenizer of a GGUF file needs transformers 5 ({error}): {INSTALL_HINT}"
        ) from error

    tokenizer_dict, tokenizer_config = _gguf_tokenizer(
        header, GGUF_TOKENIZER_MAPPING, _SPECIAL_TOKENS
    )
    try:
        backend, extra = convert_gguf_tokenizer(header.architecture, tokenizer_dict)
    except (ValueError, KeyError, TypeError) as error:
        raise GGUFError(header.path, f"cannot build its tokenizer: {error}") from error
    _restore_digit_split(backend, header.metadata)
    tokenizer = TokenizersBackend(tokenizer_object=backend, **tokenizer_config, **extra)
    written = sorted({Path(name).name for name in tokenizer.save_pretrained(str(folder))})

    # transformers 5 keeps the template in chat_template.jinja; older readers (transformers 4,
    # most other tools) look for it in tokenizer_config.json, so it goes in both.
    config_path = folder / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("chat_template", "add_bos_token", "add_eos_token"):
        if key in tokenizer_config:
            config[key] = tokenizer_config[key]
    if context_length:
        config["model_max_length"] = context_length
    atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return written


# llama.cpp's byte-level pre-tokenizers (`tokenizer.ggml.pre`) that split every digit out
# before GPT-2's rule (llama-vocab.cpp: the regexes "\\p{N}" then GPT-2's). transformers' GGUF
# converter builds GPT-2's rule alone, so the original tokenizer's `Digits` step is put back.
DIGIT_SPLITTING_PRE = frozenset(
    {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
)


def _restore_digit_split(backend: Any, metadata: dict[str, Any]) -> None:
    """Give a byte-level tokenizer built from GGUF metadata the digit-splitting step its
    `tokenizer.ggml.pre` names (SmolLM's tokenizer.json: Sequence[Digits, ByteLevel])."""
    if (
        metadata.get("tokenizer.ggml.model") != "gpt2"
        or metadata.get("tokenizer.ggml.pre") not in DIGIT_SPLITTING_PRE
    ):
        return
    from tokenizers import pre_tokenizers

    current = backend.pre_tokenizer
    if current is None or "Digits" in current.__getstate__().decode("utf-8", "replace"):
        return
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), current]
    )


def _gguf_tokenizer(
    header: GGUFHeader, mapping: dict[str, dict[str, str]], special_tokens: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(tokenizer_dict, tokenizer_config)` as transformers' `get_gguf_tokenizer` builds them,
    from metadata already read (its own reader would read the file again, and needs torch)."""
    metadata = header.metadata
    grouped = {
        group: {
            name: metadata[f"tokenizer.{key}"]
            for key, name in renames.items()
            if f"tokenizer.{key}" in metadata
        }
        for group, renames in mapping.items()
    }
    tokenizer, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    tokens = tokenizer.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise GGUFError(header.path, "tokenizer.ggml.tokens is missing or empty")
    tokenizer_type = tokenizer.get("tokenizer_type")
    if tokenizer_type == "llama":
        # older files have no flag, and llama.cpp adds BOS to a sentencepiece vocabulary
        tokenizer_config.setdefault("add_bos_token", True)
    elif tokenizer_type == "gemma4":
        tokenizer_config["add_bos_token"] = False
    for name, key in special_tokens.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise GGUFError(
                header.path,
                f"tokenizer.ggml.{key} {token_id} is outside the vocabulary of {len(tokens)}",
            )
        tokenizer_config[name] = tokens[token_id] if token_id is not None else None
    return tokenizer, tokenizer_config
