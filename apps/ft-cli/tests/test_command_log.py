"""Every `ft` command writes its log to the app's logs folder and names it in its errors; every
command switches the libraries' telemetry off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_an_error_names_the_log_which_says_what_happened(tmp_path: Path, ft_home: Path, run_ft):
    code, out = run_ft("train", cwd=tmp_path)

    log_file = ft_home / "logs" / "ft.log"
    assert code == 1
    assert out.splitlines()[-1] == f"       details in {log_file}"
    lines = log_file.read_text().splitlines()
    assert lines[0].endswith(f"INFO ft_config.command_log: ft train (in {tmp_path})")
    assert " ERROR ft_cli.main: error: no train.yml here: pass one " in lines[1]
    assert " INFO ft_config.command_log: ft train: exit 1 after " in lines[-1]
    assert oct(log_file.parent.stat().st_mode & 0o777) == "0o700"


def test_every_command_switches_telemetry_off(
    tmp_path: Path, run_ft, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    for name in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)

    code, out = run_ft("config", "schema", cwd=tmp_path)

    assert code == 0, out
    assert [os.environ.get(n) for n in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK")] == ["1", "1"]
    assert constants.HF_HUB_DISABLE_TELEMETRY is True
