"""Import a GGUF file as a Hugging Face safetensors folder, and summarize one without importing.

The folder is built next to its final place and renamed into it only once complete and
fsynced, so a crash or an error never leaves a half-written folder under the final name. It
records `ft-import.json` (where it came from and how), written last, which also lets a repeated
import of an unchanged file return at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from ft_config import atomic_write_text
from ft_config.files import fsync_dir
from ft_models import __version__
from ft_models.gguf.architectures import Architecture, TensorPlan, architecture_for
from ft_models.gguf.reader import GGUFError, GGUFHeader, read_gguf_header
from ft_models.gguf.safetensors_file import (
    DTYPES,
    SafetensorsWriter,
    TensorEntry,
    index_json,
    plan_shards,
    shard_names,
)
from ft_models.gguf.tokenizer import has_tokenizer, write_tokenizer

Progress = Callable[[int, int, str], None]
"""Called after each tensor with (tensors done, tensors in all, the tensor's HF name)."""

RECORD_NAME = "ft-import.json"
# 2: byte-level tokenizers keep the digit-splitting step `tokenizer.ggml.pre` names; folders
# imported as format 1 are imported again.
RECORD_FORMAT = 2
FINGERPRINT_BYTES = 1 << 20
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # what `save_pretrained` calls "5GB"


@dataclass(frozen=True)
class GGUFSummary:
    """What a GGUF file holds, read from its header (tensor data is not touched)."""

    path: Path
    file_size: int
    version: int
    architecture: str
    name: str | None
    tensor_count: int
    tensor_types: dict[str, int]
    """ggml type name -> how many tensors are stored in it, e.g. {"F32": 61, "Q4_1": 210}."""
    parameter_count: int
    highlights: dict[str, Any]
    """A few metadata values people ask about: context length, width, layers, heads,
    vocabulary size, tokenizer model, whether there is a chat template."""
    importable: bool
    problem: str | None
    """Why `import_gguf` would refuse the file, when it would."""


def validate_gguf(path: str | os.PathLike[str]) -> GGUFSummary:
    """Check a GGUF file's header and summarize it. Raises `GGUFError` for a malformed file;
    a well-formed one that cannot be imported (architecture, tensor types) is reported in
    `importable`/`problem` instead."""
    header = read_gguf_header(path)
    problem = None
    try:
        _plan(header)
    except GGUFError as error:
        problem = error.reason
    metadata = header.metadata
    arch = header.architecture
    tokens = metadata.get("tokenizer.ggml.tokens")
    highlights = {
        key: metadata[f"{arch}.{key}"]
        for key in (
            "context_length",
            "embedding_length",
            "block_count",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
        )
        if f"{arch}.{key}" in metadata
    }
    if isinstance(tokens, list):
        highlights["vocab_size"] = len(tokens)
    if "tokenizer.ggml.model" in metadata:
        highlights["tokenizer"] = metadata["tokenizer.ggml.model"]
    highlights["chat_template"] = "tokenizer.chat_template" in metadata
    return GGUFSummary(
        path=header.path,
        file_size=header.file_size,
        version=header.version,
        architecture=arch,
        name=metadata.get("general.name"),
        tensor_count=len(header.tensors),
        tensor_types=header.tensor_types(),
        parameter_count=sum(info.n_elements for info in header.tensors),
        highlights=highlights,
        importable=problem is None,
        problem=problem,
    )


def import_gguf(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str = "float32",
    progress: Progress | None = None,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Dequantize the GGUF file at `path` into a Hugging Face folder `out_dir` (config.json,
    generation_config.json, tokenizer files with the chat template, safetensors weights in
    `dtype`: "float32", "float16" or "bfloat16") and return `out_dir`.

    Returns at once when `out_dir` already holds an import of the same file (same size and
    first/last MiB) in the same dtype by the same ft-models version. An existing folder is only
    replaced if it is an earlier import (or empty), or with `overwrite=True`.

    Raises `GGUFError` for a malformed or unsupported file, `ImportError` when the tokenizer
    needs transformers and it is missing, `FileExistsError` for a folder that is not ours.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    path = Path(path)
    out_dir = Path(out_dir)
    header = read_gguf_header(path)
    arch, config, plan = _plan(header)

    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "source": {
            "path": str(path.resolve()),
            "size": header.file_size,
            "sha256_head_tail": _fingerprint(path, header.file_size),
        },
        "gguf": {
            "version": header.version,
            "architecture": header.architecture,
            "name": header.metadata.get("general.name"),
            "tensor_types": header.tensor_types(),
        },
        "dtype": dtype,
        "ft_models_version": __version__,
    }
    if _up_to_date(out_dir, record):
        return out_dir
    if out_dir.exists() and not overwrite and not _replaceable(out_dir):
        raise FileExistsError(
            f"{out_dir} exists and is not an earlier GGUF import; choose another folder or pass "
            "overwrite=True"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".importing", dir=out_dir.parent)
    )
    try:
        if has_tokenizer(header):
            context = config.get("max_position_embeddings") or config.get("n_positions")
            write_tokenizer(header, work, context)
        _write_weights(header, config, plan, work, dtype, max_shard_bytes, progress)
        config["dtype"] = config["torch_dtype"] = dtype
        _write_json(work / "config.json", config)
        _write_json(work / "generation_config.json", _generation_config(header, config))
        for file in work.iterdir():
            _fsync_file(file)
        record["arch"] = {"model_type": arch.model_type, "hf_class": arch.hf_class}
        record["files"] = {file.name: file.stat().st_size for file in sorted(work.iterdir())}
        _write_json(work / RECORD_NAME, record)  # last: its presence means the folder is whole
        fsync_dir(work)
        _move_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def _plan(header: GGUFHeader) -> tuple[Architecture, dict[str, Any], list[TensorPlan]]:
    arch = architecture_for(header)
    config = arch.build_config(header)
    plan = arch.tensor_plan(header, config)
    for ggml_type in {info.ggml_type for info in header.tensors}:
        _check_dequantizable(header, ggml_type)
    return arch, config, plan


def _check_dequantizable(header: GGUFHeader, ggml_type: GGMLQuantizationType) -> None:
    # gguf-py knows most types; asking it to unpack one zero block is the public way to ask
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    try:
        dequantize(np.zeros(type_size, dtype=np.uint8), ggml_type)
    except NotImplementedError:
        names = [info.name for info in header.tensors if info.ggml_type == ggml_type]
        raise GGUFError(
            header.path,
            f"tensors of type {ggml_type.name} ({names[0]}"
            + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            + ") cannot be dequantized by gguf-py",
        ) from None


def _write_weights(
    header: GGUFHeader,
    config: dict[str, Any],
    plan: Sequence[TensorPlan],
    folder: Path,
    dtype: str,
    max_shard_bytes: int,
    progress: Progress | None,
) -> None:
    entries = [TensorEntry(item.hf_name, item.hf_shape) for item in plan]
    shards = plan_shards(entries, dtype, max_shard_bytes)
    by_name = {item.hf_name: item for item in plan}
    data = np.memmap(header.path, dtype=np.uint8, mode="r")
    done = 0
    try:
        for shard, name in zip(shards, shard_names(len(shards)), strict=True):
            with SafetensorsWriter(folder / name, shard, dtype) as writer:
                for entry in shard:
                    item = by_name[entry.name]
                    info = item.source
                    raw = data[info.offset : info.offset + info.nbytes].reshape(info.byte_shape)
                    values = dequantize(raw, info.ggml_type)
                    if item.transform is not None:
                        values = item.transform.apply(values, config)
                    writer.write(entry.name, values)
                    done += 1
                    if progress is not None:
                        progress(done, len(plan), entry.name)
    finally:
        del data
    if len(shards) > 1:
        atomic_write_text(folder / "model.safetensors.index.json", index_json(shards, dtype) + "\n")


def _generation_config(header: GGUFHeader, config: dict[str, Any]) -> dict[str, Any]:
    """bos/eos/pad ids. End-of-turn (`eot`) and end-of-message (`eom`) ids, which chat models
    stop on, join eos as a list, as the models' own generation_config.json files do."""
    generation: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in config:
            generation[key] = config[key]
    stops = [config["eos_token_id"]] if "eos_token_id" in config else []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        token_id = header.metadata.get(key)
        if token_id is not None and token_id not in stops:
            stops.append(token_id)
    if len(stops) > 1:
        generation["eos_token_id"] = stops
    return generation


def _fingerprint(path: Path, size: int) -> str:
    """sha256 of the size, the first MiB and the last MiB: cheap, and it changes whenever a
    re-download or re-quantization does."""
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with path.open("rb") as file:
        digest.update(file.read(FINGERPRINT_BYTES))
        file.seek(max(size - FINGERPRINT_BYTES, 0))
        digest.update(file.read(FINGERPRINT_BYTES))
    return digest.hexdigest()


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _up_to_date(folder: Path, wanted: dict[str, Any]) -> bool:
    record = _read_record(folder)
    if record is None:
        return False
    same = all(record.get(key) == wanted[key] for key in ("format", "dtype", "ft_models_version"))
    source, wanted_source = record.get("source") or {}, wanted["source"]
    same = same and all(source.get(k) == wanted_source[k] for k in ("size", "sha256_head_tail"))
    files = record.get("files") or {}
    return (
        same
        and bool(files)
        and all(
            (folder / name).is_file() and (folder / name).stat().st_size == size
            for name, size in files.items()
        )
    )


def _replaceable(folder: Path) -> bool:
    """An earlier import, or an empty folder: never a folder someone else made."""
    return folder.is_dir() and (_read_record(folder) is not None or not any(folder.iterdir()))


def _move_into_place(work: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        try:
            work.rename(final)
        except BaseException:
            with contextlib.suppress(OSError):
                old.rename(final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(final)
    fsync_dir(final.parent)


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _fsync_file(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())
