"""Checkpoints that are complete or absent, shared by both trainers and read by the exporters.

A checkpoint is a folder of safetensors and JSON files. It is built in a temporary folder beside
its final place, every file is fsynced, a manifest with each file's size and sha256 is written
last, and only then is the folder renamed into place. A crash at any moment leaves either the
previous checkpoints untouched plus a `.tmp-*` folder (removed on the next write), or the new
checkpoint complete. Reading verifies the manifest, so a truncated or altered checkpoint is
detected and skipped instead of silently resumed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ft_config.files import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
STEP_FOLDER = re.compile(r"^step-(\d+)$")
_ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".md")


class CorruptCheckpoint(Exception):
    """A checkpoint folder that is incomplete or does not match its manifest."""


@attrs.frozen
class CheckpointManifest:
    """What a checkpoint holds: each file's size and sha256, and the step it was taken at."""

    step: int
    files: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    version: int = FORMAT_VERSION


def step_folder(root: Path, step: int) -> Path:
    """The folder name of the checkpoint at `step`: `step-00000123` sorts by step."""
    return root / f"step-{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def write_checkpoint(
    final: Path, *, step: int, metadata: dict[str, Any] | None = None
) -> Iterator[Path]:
    """Build a checkpoint: yields a temporary folder to write files into; on a clean exit the
    folder is sealed (fsync, manifest with hashes, rename to `final`).

    Only safetensors, JSON and text files are allowed (no pickle, anywhere). If `final` exists
    (a checkpoint at the same step from an earlier, interrupted attempt) it is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final.parent)
    temp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        yield temp
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(p for p in temp.rglob("*") if p.is_file()):
            rel = path.relative_to(temp).as_posix()
            if not rel.endswith(_ALLOWED_SUFFIXES):
                raise ValueError(
                    f"checkpoint file {rel!r}: only safetensors, JSON and text files are allowed"
                )
            _fsync_file(path)
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {
            "version": FORMAT_VERSION,
            "step": step,
            "files": files,
            "metadata": metadata or {},
        }
        # The manifest goes last: a folder without one was never finished.
        atomic_write_text(temp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _put_in_place(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Build a folder that appears under `final` whole or not at all: yields a temporary folder
    beside it; on a clean exit its files are fsynced and it takes `final`'s name in one rename
    (an older `final` is replaced only once the new one is in place). On an error it is
    removed and `final` is untouched. For results without a manifest (a run's final adapter);
    checkpoints use `write_checkpoint`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        yield temp
        for path in temp.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        _put_in_place(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _put_in_place(temp: Path, final: Path) -> None:
    """fsync `temp`'s folders, then rename it to `final`, keeping an older `final` reachable
    until the new one is in place."""
    for sub in sorted({temp, *(p.parent for p in temp.rglob("*"))}, key=lambda p: -len(p.parts)):
        fsync_dir(sub)
    if final.exists():
        old = final.parent / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        temp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(final)
    fsync_dir(final.parent)


def clean_stale_temporaries(root: Path) -> None:
    """Remove `.tmp-*` folders a killed process left behind."""
    if not root.is_dir():
        return
    for leftover in root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def read_manifest(folder: Path, *, verify_hashes: bool = True) -> CheckpointManifest:
    """The manifest of a checkpoint folder, after checking every file against it.

    Raises CorruptCheckpoint (saying what is wrong) when the manifest is missing or unreadable,
    or a file is missing, of the wrong size, or (with `verify_hashes`) of the wrong content.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = CheckpointManifest(
            step=int(data["step"]),
            files=dict(data["files"]),
            metadata=dict(data.get("metadata", {})),
            version=int(data.get("version", 1)),
        )
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{folder}: no {MANIFEST} (the write never finished)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"{folder}: unreadable {MANIFEST} ({exc})") from None
    if manifest.version > FORMAT_VERSION:
        raise CorruptCheckpoint(
            f"{folder}: checkpoint format {manifest.version} is newer than this ft supports"
        )
    for rel, expected in manifest.files.items():
        file = folder / rel
        if not file.is_file():
            raise CorruptCheckpoint(f"{folder}: {rel} is missing")
        if file.stat().st_size != expected["size"]:
            raise CorruptCheckpoint(
                f"{folder}: {rel} is {file.stat().st_size} bytes, the manifest says {expected['size']} (truncated?)"
            )
        if verify_hashes and _sha256(file) != expected["sha256"]:
            raise CorruptCheckpoint(f"{folder}: {rel} does not match its sha256 in the manifest")
    return manifest


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders under `root` as (step, path), oldest first, whether valid or not."""
    if not Path(root).is_dir():
        return []
    found = []
    for child in Path(root).iterdir():
        match = STEP_FOLDER.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_valid_checkpoint(root: Path) -> tuple[Path, CheckpointManifest] | None:
    """The newest checkpoint under `root` that passes `read_manifest`; broken newer ones are
    skipped with a warning naming what is wrong."""
    for _step, folder in reversed(list_checkpoints(root)):
        try:
            return folder, read_manifest(folder)
        except CorruptCheckpoint as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


@contextlib.contextmanager
def _folder_lock(root: Path, *, shared: bool) -> Iterator[bool]:
    """An advisory flock on the folder `root` itself: shared for readers, exclusive (and not
    waited for) for the pruner. Yields whether it is held. The kernel drops it when the
    process ends, so a killed reader never blocks pruning for good."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; pruning is not put off
        yield True
        return
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError:  # no folder yet: nothing to guard
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


@contextlib.contextmanager
def reading_checkpoints(root: Path) -> Iterator[None]:
    """Hold while choosing and reading checkpoints under `root` (`ft export`, `ft evaluate`):
    `prune_checkpoints` puts off deleting any of them until every reader is done. Pick the
    checkpoint (`latest_valid_checkpoint`, a step) inside the block, not before it."""
    with _folder_lock(Path(root), shared=True):
        yield


def prune_checkpoints(root: Path, *, keep_last: int, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints, never those in `keep` (the best one).
    Returns the deleted folders. While a reader holds `reading_checkpoints(root)` nothing is
    deleted (the next call catches up): a checkpoint being exported never vanishes under it."""
    with _folder_lock(Path(root), shared=False) as alone:
        if not alone:
            log.info("not pruning %s yet: a checkpoint there is being read", root)
            return []
        return _prune(root, keep_last=keep_last, keep=keep)


def _prune(root: Path, *, keep_last: int, keep: tuple[Path, ...]) -> list[Path]:
    checkpoints = list_checkpoints(root)
    protected = {Path(p).resolve() for p in keep}
    recent = {path.resolve() for _, path in checkpoints[-keep_last:]} if keep_last > 0 else set()
    deleted = []
    for _, path in checkpoints:
        if path.resolve() not in recent | protected:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted
