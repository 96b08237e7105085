"""A model's tokenizer as ft-data needs it: the ``tokenizers`` object, its chat template,
its special tokens, and a fingerprint for caches. No transformers needed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ft_data.errors import DataError

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass(frozen=True)
class ModelTokenizer:
    """``tokenizer.json`` loaded with the tokenizers library, plus what tokenizer_config.json says.

    ``special_tokens`` maps bos_token/eos_token/pad_token/unk_token to their text (only those
    set); ``fingerprint`` is the sha256 of tokenizer.json's bytes.
    """

    tokenizer: Tokenizer
    fingerprint: str
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def token_id(self, key: str) -> int | None:
        """The id of the special token ``key`` (e.g. ``"eos_token"``), or None when unset."""
        text = self.special_tokens.get(key)
        return self.tokenizer.token_to_id(text) if text is not None else None

    @property
    def eos_token_id(self) -> int | None:
        return self.token_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        """The pad token's id, else the eos token's (what trainers pad with when there is none)."""
        pad = self.token_id("pad_token")
        return pad if pad is not None else self.eos_token_id


def load_tokenizer(path: str | Path) -> ModelTokenizer:
    """Load a tokenizer from a model folder (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, chat_template.jinja) or from a tokenizer.json file.

    A ``chat_template`` given as a list of named templates uses the one named "default".
    Raises :class:`DataError` when tokenizer.json is missing or unreadable.
    """
    path = Path(path)
    folder, file = (path, path / "tokenizer.json") if path.is_dir() else (path.parent, path)
    if not file.is_file():
        raise DataError(
            "no tokenizer.json here",
            file=path,
            hint="give the model's folder, which holds tokenizer.json (ft-data reads fast tokenizers only)",
        )
    data = file.read_bytes()
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as error:
        raise DataError(f"cannot load the tokenizer: {error}", file=file) from error
    config = _json(folder / "tokenizer_config.json")
    special = {
        **_special_tokens(_json(folder / "special_tokens_map.json")),
        **_special_tokens(config),
    }
    template_file = folder / "chat_template.jinja"
    template = (
        template_file.read_text(encoding="utf-8")
        if template_file.is_file()
        else _chat_template(config)
    )
    return ModelTokenizer(
        tokenizer=tokenizer,
        fingerprint=hashlib.sha256(data).hexdigest(),
        chat_template=template,
        special_tokens=special,
        path=file,
    )


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg}", file=path, line=error.lineno) from None
    return value if isinstance(value, dict) else {}


def _special_tokens(config: dict[str, Any]) -> dict[str, str]:
    tokens = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def _chat_template(config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {
            item.get("name"): item.get("template") for item in template if isinstance(item, dict)
        }
        template = named.get("default")
    return template if isinstance(template, str) else None
