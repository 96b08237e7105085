"""Each package installs from its wheel into a fresh virtual environment outside the workspace.

The shared workspace venv lets a package import what only a sibling declares; this is the test
that catches it. ft-config, ft-data and ft-models must also stay free of torch, mlx and
transformers, which only their extras (or the trainers) may pull in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(
    p.parent for p in [*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("apps/*/pyproject.toml")]
)
HEAVY = ("torch", "mlx", "mlx_lm", "transformers", "peft")
# What each package must do once installed alone (besides importing).
SMOKE = {
    "ft-config": "from ft_config import load_config; print(load_config(profile='chat').method.rank)",
    "ft-data": "import ft_data",
    "ft-models": "from ft_models.embedded import EMBEDDED_ALIAS; print(EMBEDDED_ALIAS)",
    "ft-testing": "import ft_testing.plugin",
}
LIGHT = {"ft-config", "ft-data", "ft-models", "ft-cli"}

pytestmark = [pytest.mark.install, pytest.mark.slow]


def _uv() -> str:
    found = shutil.which("uv")
    if not found:
        pytest.skip("uv is not installed")
    return found


def _clean_env() -> dict[str, str]:
    # Nothing from the workspace's own environment may leak into the fresh one.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH")
    }


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [_uv(), "build", "--all-packages", "--wheel", "--out-dir", str(out), "--quiet"],
        cwd=ROOT,
        check=True,
        env=_clean_env(),
    )
    return out


def _name(member: Path) -> str:
    return tomllib.loads((member / "pyproject.toml").read_text())["project"]["name"]


def _fresh_venv(where: Path, wheels: Path, name: str) -> Path:
    env = _clean_env()
    subprocess.run(
        [_uv(), "venv", "--quiet", "--python", sys.executable, str(where)],
        check=True,
        env=env,
        cwd=where.parent,
    )
    python = where / "bin" / "python"
    subprocess.run(
        [
            _uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "--find-links",
            str(wheels),
            name,
        ],
        check=True,
        env=env,
        cwd=where.parent,
    )
    return python


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.name)
def test_package_installs_alone(member: Path, wheels: Path, tmp_path: Path):
    name = _name(member)
    python = _fresh_venv(tmp_path / "venv", wheels, name)
    module = name.replace("-", "_")
    code = (
        "import importlib.util, sys\n"
        f"import {module}\n"
        f"{SMOKE.get(name, '')}\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if importlib.util.find_spec(m)])\n"
        "print('FROM', " + module + ".__file__)\n"
    )
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=_clean_env(), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert str(tmp_path / "venv") in lines[-1]  # imported from the fresh venv, not the workspace
    if name in LIGHT:
        assert lines[-2] == "HEAVY []", f"{name} pulled in heavy packages"


def test_cli_runs_from_its_wheel(wheels: Path, tmp_path: Path):
    python = _fresh_venv(tmp_path / "venv", wheels, "ft-cli")
    ft = str(python.parent / "ft")
    env = _clean_env() | {"FT_HOME": str(tmp_path / "home")}
    help_text = subprocess.run(
        [ft, "--help"], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "init" in help_text and "doctor" in help_text
    subprocess.run(
        [ft, "init", str(tmp_path / "proj"), "--profile", "domain"],
        check=True,
        env=env,
        capture_output=True,
    )
    valid = subprocess.run(
        [ft, "config", "validate", str(tmp_path / "proj" / "train.yml")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert valid.returncode == 0, valid.stderr
    assert "is valid (profile domain;" in valid.stdout


def test_evaluate_without_the_torch_trainer(wheels: Path, tmp_path: Path, tiny_llama: Path):
    """`pip install "ft-cli[mlx]"`: no torch, no ft-train-torch. `ft train --backend mlx`, then
    `ft evaluate` scores the run through the MLX trainer's evaluator (the Trainer protocol),
    where it used to ask for the torch trainer by name."""
    python = _fresh_venv(tmp_path / "venv", wheels, "ft-cli[mlx]")
    ft = str(python.parent / "ft")
    env = _clean_env() | {"FT_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    found = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([m for m in ('torch', 'ft_train_torch') if u.find_spec(m)])"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert found.stdout.strip() == "[]"
    project = tmp_path / "proj"
    subprocess.run([ft, "init", str(project)], check=True, env=env, capture_output=True)
    text = (project / "train.yml").read_text().replace("name: smollm2-135m", f"name: {tiny_llama}")
    (project / "train.yml").write_text(text)

    def run(*args: str) -> str:
        done = subprocess.run([ft, *args], capture_output=True, text=True, env=env, cwd=project)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    run("train", "--backend", "mlx", "--set", "training.max_steps=2",
        "--set", "data.validation_split=0.25")  # fmt: skip
    result = json.loads(
        run("evaluate", "--no-base", "--max-examples", "2", "--max-tokens", "4", "--json")
    )
    assert result["metrics"]["eval_loss"] > 0 and "exact_match" in result["metrics"]
