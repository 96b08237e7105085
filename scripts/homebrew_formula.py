"""Write `Formula/ft.rb`, the Homebrew formula of the `ft` command, from uv.lock.

    uv run python scripts/homebrew_formula.py           # (re)write Formula/ft.rb
    uv run python scripts/homebrew_formula.py --check   # exit 1 when the committed one is stale

A Python virtualenv formula, as Homebrew writes them: ft's own packages are built from the
tagged source (`url ... tag:`), and every third-party package ft-cli needs on macOS arm64 is a
`resource` pinned to exactly what uv.lock records (the same version, file URL and sha256), so
`brew install` gets the tested set. The closure is walked in the lock from ft-cli's own
dependencies (never the dev group), with each dependency's environment marker evaluated for
macOS on Apple Silicon and Homebrew's Python.

A resource is the lock's wheel for that machine when it has one (a `py3-none-any` wheel, or a
`cp312`/`abi3` macOS arm64 wheel), else its sdist: several of ft's dependencies (polars,
tokenizers, safetensors, cryptography, mlx) need Rust, CMake or Metal toolchains to build from
source. That suits a tap; homebrew-core itself would want every resource built from an sdist.
Nothing here can be tried on Linux beyond `ruby -c`: see docs/design/macos-app.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "uv.lock"
FORMULA = ROOT / "Formula" / "ft.rb"
REPOSITORY = "https://github.com/ft-project/ft"
"""Where the tagged source is published (the formula's `url` and `homepage`)."""
PYTHON = "3.12"
"""Homebrew's `python@3.12`: ft needs 3.11 or later."""
ENVIRONMENT = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "darwin",
    "platform_system": "Darwin",
    "platform_machine": "arm64",
    "python_version": PYTHON,
    "python_full_version": f"{PYTHON}.0",
    "extra": "",
}
"""The machine the formula is for: macOS on Apple Silicon with Homebrew's Python."""
WHEEL_TAGS = (f"cp{PYTHON.replace('.', '')}", "abi3", "py3", "py2.py3")
APP = "apps/ft-cli"


def load_lock(path: Path = LOCK) -> list[dict[str, Any]]:
    return tomllib.loads(path.read_text(encoding="utf-8"))["package"]


def _applies(marker: str | None) -> bool:
    return marker is None or Marker(marker).evaluate(ENVIRONMENT)


def _candidates(packages: list[dict[str, Any]], dependency: dict[str, Any]) -> dict[str, Any]:
    found = [
        p
        for p in packages
        if p["name"] == dependency["name"]
        and ("version" not in dependency or p["version"] == dependency["version"])
    ]
    # A package the lock forks by Python version: the entry for this machine's.
    if len(found) > 1:
        found = [
            p
            for p in found
            if any(_applies(m) for m in p.get("resolution-markers", []))
            or not p.get("resolution-markers")
        ]
    if len(found) != 1:
        raise SystemExit(
            f"uv.lock: cannot choose one {dependency['name']} for macOS arm64: {found}"
        )
    return found[0]


def closure(packages: list[dict[str, Any]], root: str = "ft-cli") -> list[dict[str, Any]]:
    """Every package `root` needs on macOS arm64 (the extras it asks for included), itself and
    the other workspace members among them, sorted by name."""
    (start,) = [p for p in packages if p["name"] == root]
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    todo: list[tuple[dict[str, Any], tuple[str, ...]]] = [(start, ())]
    while todo:
        package, extras = todo.pop()
        key = (package["name"], package["version"])
        first = key not in seen
        seen[key] = package
        wanted = list(package.get("dependencies", [])) if first else []
        for extra in extras:
            wanted += package.get("optional-dependencies", {}).get(extra, [])
        for dependency in wanted:
            if _applies(dependency.get("marker")):
                todo.append((_candidates(packages, dependency), tuple(dependency.get("extra", ()))))
    return sorted(seen.values(), key=lambda p: p["name"])


def is_member(package: dict[str, Any]) -> bool:
    source = package.get("source", {})
    return "editable" in source or "virtual" in source or "directory" in source


def _wheel_fits(filename: str) -> bool:
    # name-version(-build)?-python-abi-platform.whl
    python, abi, platform = filename[: -len(".whl")].split("-")[-3:]
    if platform == "any":
        return any(tag in python.split(".") for tag in ("py3", "py2"))
    arm = "arm64" in platform or "universal2" in platform
    return arm and platform.startswith("macosx") and (python in WHEEL_TAGS or abi == "abi3")


def _macos_version(filename: str) -> tuple[int, int]:
    found = re.search(r"macosx_(\d+)_(\d+)", filename)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def artifact(package: dict[str, Any]) -> dict[str, Any]:
    """The lock's file for this machine: a fitting wheel (the oldest macOS it supports), else
    the sdist."""
    wheels = [w for w in package.get("wheels", []) if _wheel_fits(w["url"].rsplit("/", 1)[1])]
    if wheels:
        return min(wheels, key=lambda w: _macos_version(w["url"]))
    if "sdist" in package:
        return package["sdist"]
    raise SystemExit(f"uv.lock: {package['name']} {package['version']} has no file for macOS arm64")


def _member_paths() -> dict[str, str]:
    paths = {}
    for pyproject in sorted(
        [*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("apps/*/pyproject.toml")]
    ):
        name = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]
        paths[name] = pyproject.parent.relative_to(ROOT).as_posix()
    return paths


def render(packages: list[dict[str, Any]] | None = None) -> str:
    """The formula's text for the lock's packages."""
    packages = load_lock() if packages is None else packages
    needed = closure(packages)
    members = [p for p in needed if is_member(p)]
    version = next(p["version"] for p in members if p["name"] == "ft-cli")
    paths = _member_paths()
    order = [paths[p["name"]] for p in members if p["name"] != "ft-cli"]
    lines = [
        "# Generated by scripts/homebrew_formula.py from uv.lock: do not edit by hand.",
        "# brew install --build-from-source Formula/ft.rb (macOS on Apple Silicon only).",
        "class Ft < Formula",
        "  include Language::Python::Virtualenv",
        "",
        '  desc "Fine-tune language models locally: train, evaluate, chat, serve, export"',
        f'  homepage "{REPOSITORY}"',
        f'  url "{REPOSITORY}.git", tag: "ft-cli-v{version}"',
        f'  version "{version}"',
        '  license "Apache-2.0"',
        "",
        "  depends_on arch: :arm64",
        "  depends_on macos: :sonoma",
        f'  depends_on "python@{PYTHON}"',
        "",
    ]
    for package in needed:
        if is_member(package):
            continue
        file = artifact(package)
        lines += [
            f'  resource "{package["name"]}" do',
            f'    url "{file["url"]}"',
            f'    sha256 "{file["hash"].removeprefix("sha256:")}"',
            "  end",
            "",
        ]
    member_list = " ".join(order)
    lines += [
        "  def install",
        f'    python = Formula["python@{PYTHON}"].opt_libexec/"bin/python"',
        f'    venv = virtualenv_create(libexec, "python{PYTHON}")',
        "    # Wheels are installed as the files they are (pip, under their own names); sdists are",
        "    # built. --no-deps: every dependency is one of the resources above, pinned by uv.lock.",
        '    wheels, sdists = resources.partition { |r| r.url.end_with?(".whl") }',
        "    wheel_files = wheels.map do |r|",
        "      r.fetch",
        '      target = buildpath/"wheels"/File.basename(r.url)',
        "      target.dirname.mkpath",
        "      cp r.cached_download, target",
        "      target",
        "    end",
        '    system python, "-m", "pip", "--python=#{libexec}/bin/python", "install",',
        '           "--no-deps", "--no-index", "--no-compile", *wheel_files',
        "    venv.pip_install sdists",
        "    # ft's own packages, from the tagged source; then ft-cli, whose `ft` is linked.",
        f"    %w[{member_list}].each {{ |member| venv.pip_install buildpath/member }}",
        f'    venv.pip_install_and_link buildpath/"{APP}"',
        "  end",
        "",
        "  test do",
        '    assert_match "fine-tune", shell_output("#{bin}/ft --help")',
        '    system bin/"ft", "init", testpath/"proj"',
        '    assert_match "is valid", shell_output("#{bin}/ft config validate #{testpath}/proj/train.yml")',
        "  end",
        "end",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when Formula/ft.rb is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not FORMULA.is_file() or FORMULA.read_text(encoding="utf-8") != text:
            print(f"{FORMULA.relative_to(ROOT)} is stale: run scripts/homebrew_formula.py")
            return 1
        return 0
    FORMULA.parent.mkdir(exist_ok=True)
    temporary = FORMULA.with_suffix(".rb.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(FORMULA)
    print(f"wrote {FORMULA.relative_to(ROOT)}: {text.count('resource ')} resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
