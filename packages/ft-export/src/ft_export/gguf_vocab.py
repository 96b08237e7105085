"""A Hugging Face tokenizer folder as GGUF `tokenizer.*` metadata, read from its JSON files.

Two tokenizer families, as llama.cpp names them:

- `gpt2`: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2, ft's tiny models): tokens, merges,
  and `tokenizer.ggml.pre`, the name of the pre-tokenizer's split rule;
- `llama`: SentencePiece-style (Llama 2, Mistral, Gemma, Phi-3): tokens with scores, byte
  tokens `<0xNN>` typed as bytes.

Token types follow gguf-py's `TokenType`: added special tokens are CONTROL, other added tokens
USER_DEFINED, padding rows past the tokenizer's vocabulary UNUSED.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType

# The split regexes of well-known byte-level tokenizers -> llama.cpp's pre-tokenizer name.
_LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
_QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"


class TokenizerExportError(ValueError):
    """A tokenizer that cannot be written into a GGUF file."""


@dataclass
class GGUFVocab:
    model: str
    """`gpt2` or `llama` (tokenizer.ggml.model)."""
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def add_to(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_chat_template(folder: Path) -> str | None:
    """The folder's own chat template: `chat_template.jinja` (transformers 5) or the
    `chat_template` key of `tokenizer_config.json`."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = _json(folder / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level tokenizer's split rule (`tokenizer.ggml.pre`)."""
    if not pre:
        return "default"
    kinds = (
        [pre["type"]] if pre["type"] != "Sequence" else [p["type"] for p in pre["pretokenizers"]]
    )
    if kinds == ["ByteLevel"]:
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"]:
        return "smollm"  # SmolLM's tokenizer splits every digit, then GPT-2's rule
    text = json.dumps(pre)
    if _LLAMA3_SPLIT.replace("\\", "\\\\") in text:
        return "llama-bpe"
    if _QWEN2_SPLIT.replace("\\", "\\\\") in text:
        return "qwen2"
    return "default"


def read_vocab(folder: Path, vocab_size: int, chat_template: str | None = None) -> GGUFVocab:
    """The tokenizer of the model folder `folder`, padded to the model's `vocab_size`.
    `chat_template` overrides the folder's own."""
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerExportError(
            f"{folder}: no tokenizer.json; GGUF export needs the fast tokenizer "
            "(save it with AutoTokenizer.from_pretrained(...).save_pretrained(folder))"
        )
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    config = _json(folder / "tokenizer_config.json")
    model = data["model"]
    added = {t["id"]: t for t in data.get("added_tokens", [])}

    byte_level = (data.get("decoder") or {}).get(
        "type"
    ) == "ByteLevel" or "ByteLevel" in json.dumps(data.get("pre_tokenizer"))
    if model["type"] == "BPE" and byte_level and not model.get("byte_fallback"):
        kind = "gpt2"
        by_id = {i: t for t, i in model["vocab"].items()}
        scores = None
    elif model["type"] in ("BPE", "Unigram"):
        kind = "llama"
        if model["type"] == "Unigram":
            by_id = {i: piece for i, (piece, _) in enumerate(model["vocab"])}
            unigram_scores = {i: float(s) for i, (_, s) in enumerate(model["vocab"])}
        else:
            by_id = {i: t for t, i in model["vocab"].items()}
            unigram_scores = {}
        scores = []
    else:
        raise TokenizerExportError(
            f"{tokenizer_file}: a {model['type']} tokenizer cannot be written to GGUF "
            "(supported: byte-level BPE and SentencePiece-style BPE/Unigram)"
        )
    for token_id, token in added.items():
        by_id[token_id] = token["content"]
    size = max(vocab_size, max(by_id) + 1)
    unk = model.get("unk_token")
    tokens, types = [], []
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif kind == "llama" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            tokens.append(text)
            types.append(TokenType.BYTE)
        elif text == unk:
            tokens.append(text)
            types.append(TokenType.UNKNOWN)
        elif i in added:
            tokens.append(text)
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(TokenType.NORMAL)
        if scores is not None:
            # SentencePiece merges the highest score first; for BPE, earlier ids merge first
            scores.append(unigram_scores.get(i, -float(i)) if i not in added else -1000.0)

    merges = []
    if kind == "gpt2":
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    ids = {text: i for i, text in enumerate(tokens)}
    special: dict[str, int] = {}
    for kind_name in ("bos", "eos", "unk", "pad", "sep", "cls", "mask"):
        text = _token_text(config.get(f"{kind_name}_token"))
        if text is not None and text in ids:
            special[kind_name] = ids[text]
    add_bos, add_eos = _adds_special(data, config, tokens, special)
    template = chat_template if chat_template is not None else read_chat_template(folder)
    return GGUFVocab(
        model=kind,
        pre=pre_tokenizer_name(data.get("pre_tokenizer")) if kind == "gpt2" else "default",
        tokens=tokens,
        types=[int(t) for t in types],
        scores=scores,
        merges=merges,
        special_ids=special,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template,
    )


def _adds_special(
    data: dict[str, Any], config: dict[str, Any], tokens: list[str], special: dict[str, int]
) -> tuple[bool, bool]:
    """Whether encoding adds bos/eos: tokenizer_config's flags, else the post-processor's
    template (a TemplateProcessing that puts the bos token before `$A`)."""
    add_bos = config.get("add_bos_token")
    add_eos = config.get("add_eos_token")
    post = data.get("post_processor") or {}
    single = post.get("single") if post.get("type") == "TemplateProcessing" else None
    if single is not None:
        pieces = [p.get("SpecialToken", {}).get("id") for p in single]
        seq_at = next((i for i, p in enumerate(single) if "Sequence" in p), 0)
        before, after = pieces[:seq_at], pieces[seq_at + 1 :]
        if add_bos is None:
            add_bos = "bos" in special and tokens[special["bos"]] in before
        if add_eos is None:
            add_eos = "eos" in special and tokens[special["eos"]] in after
    return bool(add_bos), bool(add_eos)
