"""Write files so that a crash or a kill never leaves a half-written one under its final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk, so a rename inside it survives a power cut."""
    if os.name != "posix":  # Windows cannot open directories; its renames are durable enough.
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically, with permission bits `mode`.

    The bytes go to a temporary file in the same folder, created with `mode` from the start (so
    a secret is never briefly world-readable), fsynced, then renamed over `path`. Readers see
    the old file or the new one, never a mix; after a crash only a `.tmp` file can be left over.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode) if hasattr(os, "fchmod") else tmp.chmod(mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, mode: int = 0o644, encoding: str = "utf-8"
) -> Path:
    """Write `text` to `path` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)
