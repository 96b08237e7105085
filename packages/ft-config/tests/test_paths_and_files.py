"""App folders per platform, FT_HOME, and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ft_config import app_paths, atomic_write_text


def test_macos_keeps_everything_under_application_support():
    paths = app_paths({}, platform="darwin")
    base = Path.home() / "Library" / "Application Support" / "FineTune"
    assert paths.home == base
    assert [paths.models, paths.datasets, paths.configs, paths.logs] == [
        base / "models",
        base / "datasets",
        base / "configs",
        base / "logs",
    ]
    assert paths.database == base / "ft.db"


def test_linux_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    paths = app_paths({}, platform="linux")
    assert paths.home == tmp_path / "data" / "FineTune"
    assert paths.models == tmp_path / "data" / "FineTune" / "models"
    assert paths.configs == tmp_path / "config" / "FineTune"
    assert paths.logs == tmp_path / "state" / "FineTune" / "log"


def test_ft_home_overrides_everything(tmp_path):
    paths = app_paths({"FT_HOME": str(tmp_path / "ft")}, platform="darwin")
    assert paths.home == tmp_path / "ft"
    assert paths.configs == tmp_path / "ft" / "configs"
    paths.ensure()
    assert all(Path(p).is_dir() for k, p in paths.as_dict().items() if k != "database")
    # Checkpoints live in run folders: no app-wide checkpoints/ folder that nothing writes.
    assert sorted(p.name for p in paths.home.iterdir()) == [
        "configs", "datasets", "logs", "models"
    ]  # fmt: skip


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "train.yml"
    atomic_write_text(path, "old: 1\n")

    def crash(fd):
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new: 2\n")
    assert path.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.yml"]  # no temp file left


def test_atomic_write_sets_the_mode(tmp_path):
    assert (atomic_write_text(tmp_path / "a", "x", mode=0o600).stat().st_mode & 0o777) == 0o600


def test_the_command_log_is_rotated_and_capped_and_masks_url_tokens(tmp_path):
    import logging

    from ft_config.command_log import start_command_log

    command_log = start_command_log(
        ["ft", "train", "--set", "x=1"], folder=tmp_path, max_bytes=2_000, backups=2
    )
    logger = logging.getLogger("ft_runs.example")
    for i in range(100):
        logger.debug("step %d: a line of about sixty characters to fill the log", i)
    logger.debug("fetching %s", "https://example.com/data.jsonl?token=hf_secret123")
    command_log.close("exit 0")
    logger.debug("after the command: not logged")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.log", "ft.log.1", "ft.log.2"]
    assert all(p.stat().st_size <= 2_000 for p in tmp_path.iterdir())
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert "hf_secret123" not in text and "not logged" not in text
    assert "fetching https://example.com/data.jsonl?token=" in text
    assert text.count("step 99: ") == 1
    assert "ft train: exit 0 after " in (tmp_path / "ft.log").read_text()
