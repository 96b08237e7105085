"""Each command's log, for when something goes wrong: `<app logs>/ft.log`, rotated.

A command (`ft train`, a server request handler, a script) calls `start_command_log` once; from
then on what ft's packages log (`logging.getLogger(__name__)` in ft_config, ft_data, ft_models,
ft_train_*, ft_export, ft_runs, ft_cli), down to debug level, goes to the file with a timestamp
and the process id, between a line naming the command and a line with its exit status and
duration. The terminal shows none of it: an error names the file ("details in ...").

The file is rotated by size (`logging.handlers.RotatingFileHandler`): at `max_bytes` it becomes
`ft.log.1` (then `.2`, ...), and only `backups` old files are kept, so the folder stays under
`(backups + 1) * max_bytes`.
"""

from __future__ import annotations

import logging
import logging.handlers
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from ft_config.paths import app_paths

LOG_NAME = "ft.log"
MAX_BYTES = 2 * 1024 * 1024
"""The size at which the log is rotated."""
BACKUPS = 3
"""Rotated files kept beside the current one (ft.log.1 ... ft.log.3)."""
PACKAGES = (
    "ft_config",
    "ft_data",
    "ft_models",
    "ft_train_core",
    "ft_train_torch",
    "ft_train_mlx",
    "ft_export",
    "ft_runs",
    "ft_cli",
)
"""The loggers whose records the file takes, at every level."""

log = logging.getLogger(__name__)


class _MaskCredentialURLs(logging.Filter):
    """Tokens in data URLs (`?token=...`, `user:pass@`) never reach the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ft_config.secrets import redact_urls_in

        message = record.getMessage()
        masked = redact_urls_in(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class CommandLog:
    """The log of one command: open from `start_command_log` until `close`."""

    def __init__(self, path: Path, handler: logging.Handler, command: str) -> None:
        self.path = path
        self.command = command
        self._handler = handler
        self._started = time.perf_counter()
        self._levels: dict[str, int] = {}
        for name in PACKAGES:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)

    def close(self, status: str = "exit 0") -> None:
        """Write the closing line (`status`, the duration) and detach the file."""
        if self._handler is None:
            return
        took = time.perf_counter() - self._started
        log.info("%s: %s after %.2f s", self.command, status, took)
        for name in PACKAGES:
            logger = logging.getLogger(name)
            logger.removeHandler(self._handler)
            logger.setLevel(self._levels[name])
        self._handler.close()
        self._handler = None  # type: ignore[assignment]


def start_command_log(
    argv: Sequence[str],
    *,
    folder: Path | None = None,
    max_bytes: int = MAX_BYTES,
    backups: int = BACKUPS,
) -> CommandLog | None:
    """Start logging the command `argv` (`["ft", "train", ...]`) to `folder / ft.log` (default:
    the app's logs folder, created 0700). None when the folder cannot be written: a log must
    never stop a command."""
    folder = folder if folder is not None else app_paths().logs
    path = folder / LOG_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    except OSError:
        return None
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_MaskCredentialURLs())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    command = shlex.join(_command_words(argv))
    opened = CommandLog(path, handler, command)
    log.info("%s (in %s)", shlex.join(argv), Path.cwd())
    return opened


def _command_words(argv: Sequence[str]) -> list[str]:
    """`ft config validate` of `ft config validate train.yml --set a=b`: the leading words that
    name commands (no options, paths or values)."""
    words = list(argv[:1]) or ["ft"]
    for word in argv[1:4]:
        if not word.replace("-", "").isalnum() or word.startswith("-"):
            break
        words.append(word)
    return words
