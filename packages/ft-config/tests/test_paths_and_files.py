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
    assert [paths.models, paths.datasets, paths.checkpoints, paths.configs, paths.logs] == [
        base / "models",
        base / "datasets",
        base / "checkpoints",
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
    assert paths.checkpoints == tmp_path / "data" / "FineTune" / "checkpoints"
    assert paths.configs == tmp_path / "config" / "FineTune"
    assert paths.logs == tmp_path / "state" / "FineTune" / "log"


def test_ft_home_overrides_everything(tmp_path):
    paths = app_paths({"FT_HOME": str(tmp_path / "ft")}, platform="darwin")
    assert paths.home == tmp_path / "ft"
    assert paths.configs == tmp_path / "ft" / "configs"
    paths.ensure()
    assert all(Path(p).is_dir() for k, p in paths.as_dict().items() if k != "database")


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
