"""The prepared-dataset cache: one HDF5 file per cache key, in the app's datasets folder.

A prepared dataset is named after its cache key (``prepare_dataset``'s: the source's bytes,
the tokenizer, the template and every option), so preparing the same data the same way again
finds the earlier file, from whichever project asks. ``index.json`` beside the files records
when each was last used and where it came from (access times are unreliable: ``noatime``
mounts, and reading through h5py need not update them); the file's mtime is set on each use
too, so the order survives a lost index.

After each prepare the least recently used files are deleted until the folder is within its
size limit: ``FT_DATASET_CACHE_GB`` gigabytes (10^9 bytes), 20 by default. The file just
prepared is never deleted, even when it alone is over the limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_config import app_paths, atomic_write_text, redact_url
from ft_data.errors import DataError
from ft_data.prepare import PrepareOptions, PrepareResult, prepare_dataset
from ft_data.tokenizer import ModelTokenizer

LIMIT_ENV = "FT_DATASET_CACHE_GB"
DEFAULT_LIMIT_GB = 20.0
INDEX_FILE = "index.json"
_LOCK_FILE = ".lock"
_NAME_CHARS = 32  # of the 64 hex digits of the key: 128 bits, and shorter names
_STALE_PARTIAL_S = 24 * 3600  # a partial file this old belongs to a writer that died


@dataclass(frozen=True)
class CacheEntry:
    """One prepared dataset in the cache. ``last_used`` is a Unix time; ``source`` is what it
    was prepared from (None when the index does not know)."""

    path: Path
    size: int
    last_used: float
    source: str | None = None


@dataclass(frozen=True)
class CachedResult(PrepareResult):
    """A :class:`PrepareResult`, and the least recently used files deleted to make room."""

    evicted: tuple[CacheEntry, ...] = ()


def cache_limit_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The cache's size limit in bytes, from ``FT_DATASET_CACHE_GB`` (default 20).

    Raises :class:`DataError` when the variable is not a number of gigabytes >= 0.
    """
    env = os.environ if environ is None else environ
    text = env.get(LIMIT_ENV, "").strip()
    if not text:
        return int(DEFAULT_LIMIT_GB * 1e9)
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = -1.0
    if not gigabytes >= 0:  # also refuses nan
        raise DataError(
            f"{LIMIT_ENV}={text!r} is not a size in gigabytes",
            hint=f"set it to a number such as 20 or 0.5, or unset it for {DEFAULT_LIMIT_GB:g} GB",
        )
    return int(gigabytes * 1e9)


class DatasetCache:
    """The prepared datasets in ``folder`` (default: the app's datasets folder, see
    ``ft_config.app_paths``), kept within ``limit_bytes`` (default: :func:`cache_limit_bytes`)."""

    def __init__(self, folder: str | Path | None = None, *, limit_bytes: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else app_paths().datasets
        self.limit_bytes = cache_limit_bytes() if limit_bytes is None else limit_bytes

    def path_for(self, key: str) -> Path:
        """Where the dataset with cache key ``key`` lives."""
        return self.folder / f"{key[:_NAME_CHARS]}.h5"

    def prepare(
        self,
        source: str | Path,
        tokenizer: ModelTokenizer | str | Path,
        options: PrepareOptions | None = None,
        *,
        rebuild: bool = False,
        progress: Callable[[int], None] | None = None,
        url_token: str | None = None,
    ) -> CachedResult:
        """:func:`~ft_data.prepare.prepare_dataset` into the cache: reuse the file prepared
        the same way before, or write it; then record the use and evict what no longer fits."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        result = prepare_dataset(
            source,
            tokenizer,
            self.path_for,
            options,
            rebuild=rebuild,
            progress=progress,
            url_token=url_token,
        )
        self.record_use(result.path, source=_describe(source))
        evicted = self.evict(keep=[result.path])
        return CachedResult(result.path, result.reused, result.report, tuple(evicted))

    def record_use(self, path: str | Path, *, source: str | None = None) -> None:
        """Mark ``path`` as used now (in the index and in its mtime)."""
        path = Path(path)
        now = time.time()
        with self._locked():
            index = self._read_index()
            entry = index.setdefault(path.name, {})
            entry["last_used"] = now
            if source is not None:
                entry["source"] = source
            os.utime(path, (now, now))
            self._write_index(index)

    def entries(self) -> list[CacheEntry]:
        """Every prepared dataset in the cache, least recently used first."""
        with self._locked():
            return self._entries(self._read_index())

    def total_bytes(self) -> int:
        """The size of every prepared dataset in the cache."""
        return sum(entry.size for entry in self.entries())

    def evict(self, keep: Iterable[str | Path] = ()) -> list[CacheEntry]:
        """Delete the least recently used datasets until the rest fit in ``limit_bytes``,
        never one of ``keep``; return what was deleted. Also removes partial files that a
        writer which died left behind."""
        kept = {Path(path).absolute() for path in keep}
        with self._locked():
            index = self._read_index()
            entries = self._entries(index)
            total = sum(entry.size for entry in entries)
            evicted = []
            for entry in entries:
                if total <= self.limit_bytes:
                    break
                if entry.path.absolute() in kept or not _unlink(entry.path):
                    continue
                total -= entry.size
                evicted.append(entry)
            self._remove_stale_partials()
            self._write_index(index)
        return evicted

    def clear(self, keep: Iterable[str | Path] = ()) -> list[CacheEntry]:
        """Delete every prepared dataset but ``keep``; return what was deleted."""
        kept = {Path(path).absolute() for path in keep}
        with self._locked():
            index = self._read_index()
            removed = [
                entry
                for entry in self._entries(index)
                if entry.path.absolute() not in kept and _unlink(entry.path)
            ]
            self._remove_stale_partials()
            self._write_index(index)
        return removed

    # The index and the lock -------------------------------------------------------------------

    def _entries(self, index: dict[str, dict[str, Any]]) -> list[CacheEntry]:
        if not self.folder.is_dir():
            return []
        entries = []
        for path in self.folder.glob("*.h5"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # deleted meanwhile by another process
            known = index.get(path.name, {})
            last_used = known.get("last_used")
            entries.append(
                CacheEntry(
                    path,
                    stat.st_size,
                    float(last_used) if isinstance(last_used, int | float) else stat.st_mtime,
                    known.get("source"),
                )
            )
        return sorted(entries, key=lambda entry: (entry.last_used, entry.path.name))

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.folder / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # missing or broken: the files' mtimes stand in
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return {}
        return {name: entry for name, entry in entries.items() if isinstance(entry, dict)}

    def _write_index(self, index: dict[str, dict[str, Any]]) -> None:
        present = {path.name for path in self.folder.glob("*.h5")}
        kept = {name: entry for name, entry in sorted(index.items()) if name in present}
        text = json.dumps({"version": 1, "entries": kept}, indent=1, sort_keys=True) + "\n"
        atomic_write_text(self.folder / INDEX_FILE, text, mode=0o600)

    def _remove_stale_partials(self) -> None:
        cutoff = time.time() - _STALE_PARTIAL_S
        for path in self.folder.glob(".*.partial"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time reads and rewrites the index (advisory lock, POSIX)."""
        try:
            import fcntl
        except ImportError:  # Windows: no lock; the index is still written atomically
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / _LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_cached(
    source: str | Path,
    tokenizer: ModelTokenizer | str | Path,
    options: PrepareOptions | None = None,
    *,
    rebuild: bool = False,
    progress: Callable[[int], None] | None = None,
    url_token: str | None = None,
) -> CachedResult:
    """Prepare ``source`` into the default cache (see :class:`DatasetCache`)."""
    return DatasetCache().prepare(
        source, tokenizer, options, rebuild=rebuild, progress=progress, url_token=url_token
    )


def _unlink(path: Path) -> bool:
    """Delete ``path``; False when it cannot be (e.g. open elsewhere on Windows)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _describe(source: str | Path) -> str:
    text = str(source)
    if not isinstance(source, str | Path):  # a mixture, a Hub dataset: as they describe themselves
        return redact_url(text)
    # A URL goes into the index with its credentials masked (never a token on disk).
    return redact_url(text) if "://" in text else str(Path(text).expanduser().absolute())
