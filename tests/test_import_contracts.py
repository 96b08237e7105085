"""The dependency direction of docs/architecture.md, enforced: import-linter's contracts in the
root pyproject.toml hold for the code as it is, and break on an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(*, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_the_contracts_hold() -> None:
    done = lint_imports()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_them(tmp_path: Path) -> None:
    """ft-config, copied with one module that imports ft-runs, found first on the path: the
    bottom package importing one above it fails the check, naming the import."""
    import ft_config

    copy = tmp_path / "ft_config"
    shutil.copytree(Path(ft_config.__file__).parent, copy)
    (copy / "upward.py").write_text("import ft_runs.training\n", encoding="utf-8")
    done = lint_imports(pythonpath=tmp_path)
    assert done.returncode != 0
    assert "ft-config is the bottom: it imports no other ft package BROKEN" in done.stdout
    assert "ft_config.upward -> ft_runs.training" in done.stdout
