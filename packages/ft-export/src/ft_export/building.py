"""The steps every exporter shares: a build folder beside the output that appears whole (or
not at all), ft's merged model and its reference answer for the check, the chat template an
export must keep, and a source's adapter in PEFT's layout."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_export.types import (
    ExportError,
    ExportOptions,
    ExportResult,
    ExportSource,
    Progress,
    Verification,
    VerificationError,
)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _build_folder(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty: choose another -o/--output")
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.with_name(f".tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    build.mkdir()
    return build


def _publish(build: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # empty, checked by _build_folder
    build.rename(out)


def _export_seconds(started: float, verification: Verification | None) -> float | None:
    """The time spent writing: all of it, less the check when the check was timed apart."""
    elapsed = time.perf_counter() - started
    if verification is None:
        return elapsed
    return None if verification.seconds is None else elapsed - verification.seconds


def _finish(
    build: Path,
    out: Path,
    fmt: str,
    verification: Verification | None,
    notes: list[str],
    seconds: float | None,
) -> ExportResult:
    _publish(build, out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    # writing and checking may both combine adapters: say each thing once
    result = ExportResult(fmt, out, files, verification, list(dict.fromkeys(notes)), seconds)
    if verification is not None and not verification.passed:
        raise VerificationError(
            f"the {fmt} export in {out} failed its check: {verification.summary()}", result
        )
    return result


def names_a_file(out: Path, suffix: str) -> bool:
    """`-o` names the export's one file (not a folder to write it in): it ends in `suffix` and
    is not an existing folder."""
    return out.suffix.lower() == suffix and not out.is_dir()


def build_export(
    out: Path,
    fmt: str,
    write: Callable[[Path], tuple[Verification | None, list[str]]],
    *,
    single_file: bool = False,
) -> ExportResult:
    """Run `write(build)` in a fresh build folder beside `out` and publish it as `out`; what
    `write` returns is the check and its notes. With `single_file`, `out` is the path of the
    one file `write` makes, and that file alone is moved there. A failed check still publishes
    the export and raises VerificationError; any other error leaves nothing behind."""
    if single_file:
        return _build_file(out, fmt, write)
    build = _build_folder(out)
    started = time.perf_counter()
    try:
        verification, notes = write(build)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return _finish(build, out, fmt, verification, notes, _export_seconds(started, verification))


def _build_file(
    out: Path, fmt: str, write: Callable[[Path], tuple[Verification | None, list[str]]]
) -> ExportResult:
    if out.exists():
        raise ExportError(f"{out} already exists: choose another -o/--output")
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.with_name(f".tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    build.mkdir()
    started = time.perf_counter()
    try:
        verification, notes = write(build)
        [made] = [p for p in build.iterdir() if p.is_file()]
        made.replace(out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    seconds = _export_seconds(started, verification)
    result = ExportResult(fmt, out, [out], verification, list(dict.fromkeys(notes)), seconds)
    if verification is not None and not verification.passed:
        raise VerificationError(
            f"the {fmt} export {out} failed its check: {verification.summary()}", result
        )
    return result


@dataclass
class Merged:
    model: Any
    tokenizer: Any
    reference: Any
    notes: list[str]


def merge_for_check(source: ExportSource, options: ExportOptions, progress: Progress) -> Merged:
    """ft's own merged model of `source`, its tokenizer and its greedy answer to the check's
    prompt: what every export is compared with."""
    from ft_export.merge import load_tokenizer, merged_model
    from ft_export.verify import reference_of

    progress("loading and merging", 0, 0)
    model, notes = merged_model(source)
    tokenizer = load_tokenizer(source)
    reference = reference_of(model, tokenizer, options.prompt, options.greedy_tokens)
    progress("loading and merging", 1, 1)
    return Merged(model, tokenizer, reference, notes)


def expected_template(source: ExportSource, tokenizer: Any) -> str | None:
    """The chat template an export must carry: the training's, else the tokenizer's."""
    return source.chat_template if source.chat_template is not None else tokenizer.chat_template


def require_adapter(source: ExportSource, fmt: str) -> None:
    """Refuse an adapter format for a source without an adapter."""
    if not source.adapters:
        raise ExportError(
            f"--format {fmt} exports an adapter, and {source.base} is a plain model; "
            "name a run of a LoRA method, or pass --adapter PATH"
        )


def save_adapter(source: ExportSource, build: Path) -> list[str]:
    """The source's adapter in PEFT's layout in `build` (the combination when several)."""
    from ft_export.merge import load_base, with_adapters

    if len(source.adapters) == 1:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (source.adapters[0] / name).is_file():
                raise ExportError(f"{source.adapters[0]} has no {name}: not a PEFT adapter")
            shutil.copy2(source.adapters[0] / name, build / name)
        return []
    model, notes = with_adapters(load_base(source.base), source)
    with tempfile.TemporaryDirectory(dir=build.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=["combined"], safe_serialization=True)
        saved = Path(tmp) / "combined"
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.move(saved / name, build / name)
    return notes
