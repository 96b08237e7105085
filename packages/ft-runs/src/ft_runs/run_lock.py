"""One writer per run folder: the lock the training process holds on its run folder.

`ft train` (a new run, or `--resume`) takes an exclusive `flock` on `<run>/run.lock` before it
writes anything in the folder and keeps it until it is done. The kernel drops a flock when the
last descriptor of it closes, so a crash or a SIGKILL never leaves a run locked. Trainer
processes that `ft train` launches (torchrun, mlx.launch) inherit the descriptor: the run stays
locked while they live, even when the `ft train` that started them was killed.

The file says who holds the lock (pid, host, launched pids) for the message a second writer
gets; what it says means nothing while nobody holds the lock, so the file is never deleted
(deleting it would let a waiting process and a new one lock two different files).

Readers (`ft export`, `ft evaluate`) do not take this lock: they hold
`ft_models.checkpoint.reading_checkpoints` on the run's checkpoints, which makes the trainer put
off pruning while they read (`reading`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = "run.lock"
_WAIT_S = 2.0  # how long to retry: `holder()` probes the lock for a moment, never longer


class RunLocked(RuntimeError):
    """Another live process trains this run (`holder` says which)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class RunLock:
    """The exclusive lock on a run folder, held by the process that trains the run."""

    def __init__(self, folder: str | os.PathLike[str], *, wait_s: float = _WAIT_S) -> None:
        self.folder = Path(folder)
        self.wait_s = wait_s
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise RunLocked naming the process that holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunLocked(locked_message(self.folder), _read(self.path)) from None
                time.sleep(0.05)
        self._fd = fd
        self._record(launched=())
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the last descriptor closed: the kernel drops the lock
            self._fd = None

    def fileno(self) -> int:
        """The locked descriptor, for `subprocess.Popen(pass_fds=...)`: processes that inherit
        it keep the run locked while they live."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held")
        return self._fd

    def launched(self, pids: Iterable[int]) -> None:
        """Record the pids of the trainer processes started under this lock (for the message)."""
        self._record(launched=tuple(pids))

    def _record(self, *, launched: tuple[int, ...]) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "launched": list(launched),
        }
        data = (json.dumps(info) + "\n").encode()
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds `folder`'s run lock (`pid`, `host`, `launched`), or None when nobody does."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this system
        return None
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path) or {"pid": None, "host": None, "launched": []}
        return None
    finally:
        os.close(fd)


def locked_message(folder: Path) -> str:
    info = _read(Path(folder) / LOCK_FILE)
    pid, host = info.get("pid"), info.get("host") or "an unknown host"
    launched = [p for p in info.get("launched") or [] if isinstance(p, int)]
    if host == socket.gethostname() and pid is not None and not pid_alive(pid) and launched:
        # `ft train` was killed; the trainer processes it launched still hold the run.
        pid = launched[0]
    who = f"process {pid}" if pid is not None else "another process"
    return (
        f"{folder.name} is being trained by {who} on {host}: wait for it to finish, or stop it "
        f"(Ctrl-C in its terminal, or `kill {pid}`) and then `ft train --resume {folder.name}`"
    )


@contextlib.contextmanager
def reading(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold while choosing and reading a run's checkpoint: its trainer, if one runs, does not
    prune checkpoints until the block ends."""
    from ft_models.checkpoint import reading_checkpoints

    with reading_checkpoints(Path(folder) / "checkpoints"):
        yield


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (one another user owns counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
