"""Formula/ft.rb, the Homebrew formula of the `ft` command: Ruby parses it, every resource is
exactly what uv.lock records, and it is what scripts/homebrew_formula.py writes now."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORMULA = ROOT / "Formula" / "ft.rb"
RESOURCE = re.compile(r'resource "([^"]+)" do\n\s+url "([^"]+)"\n\s+sha256 "([0-9a-f]{64})"\n')


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "homebrew_formula", ROOT / "scripts" / "homebrew_formula.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock() -> dict[str, list[dict]]:
    packages: dict[str, list[dict]] = {}
    for package in tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))["package"]:
        packages.setdefault(package["name"], []).append(package)
    return packages


def test_ruby_parses_the_formula() -> None:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (.ci/run installs Debian's)")
    done = subprocess.run([ruby, "-c", str(FORMULA)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Syntax OK"


def test_every_resource_is_the_file_uv_lock_records() -> None:
    text = FORMULA.read_text(encoding="utf-8")
    resources = RESOURCE.findall(text)
    assert len(resources) == text.count('resource "') > 50
    lock = _lock()
    for name, url, sha256 in resources:
        filename = url.rsplit("/", 1)[1]
        matches = [
            (package["version"], file["hash"])
            for package in lock[name]
            for file in [*package.get("wheels", []), *[package.get("sdist", {})]]
            if file.get("url") == url
        ]
        assert len(matches) == 1, f"{name}: {url} is not in uv.lock"
        version, hash_ = matches[0]
        assert hash_ == f"sha256:{sha256}", name
        # The file's own name carries the version: name-version.tar.gz or name-version-....whl
        assert re.split(r"-(?=\d)", filename, maxsplit=1)[1].startswith(
            version + ("-" if filename.endswith(".whl") else ".")
        ), (name, filename, version)


def test_the_formula_holds_what_ft_cli_needs_on_a_mac_and_nothing_else() -> None:
    names = {name for name, _, _ in RESOURCE.findall(FORMULA.read_text(encoding="utf-8"))}
    assert {"mlx", "mlx-lm", "transformers", "click", "rich", "polars", "huggingface-hub"} <= names
    # The trainer of a Mac is MLX; torch, the dev tools and ft's own packages are no resources.
    assert not names & {"torch", "peft", "pytest", "ruff", "mkdocs", "twine", "ft-cli", "ft-data"}


def test_the_committed_formula_is_not_stale() -> None:
    assert FORMULA.read_text(encoding="utf-8") == _script().render(), (
        "Formula/ft.rb is stale: run `uv run python scripts/homebrew_formula.py` (or `just formula`)"
    )
