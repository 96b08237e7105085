"""Every member's README shows examples that run, and print what their comments say.

For each README (packages/*/README.md, apps/*/README.md) the ```python blocks run in order, as
one script, in a fresh Python process: its working folder is a temporary one holding the inputs
the README names (`SETUPS`: a model folder, a data file, an adapter), with `FT_HOME` and
`HF_HOME` in that folder, no Hugging Face token and `HF_HUB_OFFLINE=1`. The script keeps each
block on its README line, so a traceback's line numbers are the README's. A README whose blocks
are tests (ft-testing's) runs them under pytest instead.

What a block prints is written in a comment: at the end of a `print(...)` line, or in the
comment lines right below one; each such line must appear in the output, in order, with `...`
standing for any text. A block that must not run is fenced as something else (```toml,
```bash, ```text).
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import time
import tokenize
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = {
    path.parent.name: path
    for path in sorted([*ROOT.glob("packages/*/README.md"), *ROOT.glob("apps/*/README.md")])
}
TIMEOUT_S = 600

Prepare = Callable[[Path, pytest.FixtureRequest], None]


# -- what each README's examples need -----------------------------------------------------------


def _nothing(work: Path, request: pytest.FixtureRequest) -> None:
    """The example makes its own inputs."""


def _train_yml(work: Path, request: pytest.FixtureRequest) -> None:
    """`train.yml` as `ft init` writes it."""
    from ft_config import render_train_yml

    (work / "train.yml").write_text(render_train_yml("chat"), encoding="utf-8")


def _smollm2_folder_and_alpaca(work: Path, request: pytest.FixtureRequest) -> None:
    """`models/SmolLM2-135M-Instruct` (a model folder) and `alpaca_en_demo.json`."""
    (work / "models").mkdir()
    (work / "models" / "SmolLM2-135M-Instruct").symlink_to(
        request.getfixturevalue("smollm2_folder")
    )
    datasets: Path = request.getfixturevalue("shared_datasets")
    shutil.copy(datasets / "alpaca_en_demo.json", work)


def _base_model_and_adapter(work: Path, request: pytest.FixtureRequest) -> None:
    """`base-model` (a small Llama folder) and `runs/x/adapter` (a peft LoRA adapter on it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = shutil.copytree(
        request.getfixturevalue("tiny_model_factory")("llama"), work / "base-model"
    )
    torch.manual_seed(0)
    # init_lora_weights=False: a nonzero B, so the adapter changes what the model computes.
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated thing
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    model.save_pretrained(work / "runs" / "x" / "adapter")


MY_PLUGIN = '''\
"""A third-party ft plugin, as ft-testing's README imagines it."""

import shutil
from pathlib import Path


def my_export(model_dir, out):
    Path(out).mkdir(parents=True)
    shutil.copy(Path(model_dir) / "model.safetensors", Path(out) / "model.safetensors")
'''


def _my_plugin(work: Path, request: pytest.FixtureRequest) -> None:
    """`my_plugin.py`: the plugin whose tests ft-testing's README shows."""
    (work / "my_plugin.py").write_text(MY_PLUGIN, encoding="utf-8")


@dataclass(frozen=True)
class Setup:
    prepare: Prepare = _nothing
    needs: tuple[str, ...] = ()
    """Fixtures the example needs even though it prepares nothing (they skip when missing)."""
    runner: str = "python"
    """`python`: the blocks are a script; `pytest`: they are a test module."""
    slow: bool = True


SETUPS: dict[str, Setup] = {
    "ft-config": Setup(_train_yml, slow=False),
    "ft-data": Setup(_smollm2_folder_and_alpaca),
    "ft-models": Setup(needs=("smollm2_gguf",)),
    "ft-train-core": Setup(slow=False),
    "ft-train-torch": Setup(),
    "ft-train-mlx": Setup(),
    "ft-export": Setup(_base_model_and_adapter),
    "ft-runs": Setup(needs=("smollm2_gguf",)),
    "ft-testing": Setup(_my_plugin, runner="pytest"),
    "ft-cli": Setup(slow=False),
    "ft-server": Setup(slow=False),
}


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder (imported once)."""
    from ft_models.gguf import import_gguf

    folder = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    return import_gguf(smollm2_gguf, folder, dtype="bfloat16")


# -- reading a README ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    first_line: int
    """The README line (1-based) of the block's first line of code."""
    code: str


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with where each starts."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        first_line = text.count("\n", 0, match.start(1)) + 1
        blocks.append(Block(first_line, match.group(1)))
    return blocks


def as_script(text: str, blocks: list[Block]) -> str:
    """The blocks as one script, each at its README lines (blank lines between)."""
    lines = [""] * (text.count("\n") + 1)
    for block in blocks:
        for offset, line in enumerate(block.code.splitlines()):
            lines[block.first_line - 1 + offset] = line
    return "\n".join(lines) + "\n"


def expected_output(code: str) -> list[str]:
    """What the comments of `code` say its print() calls print, in order (see the module doc)."""
    lines = code.splitlines()
    comments: dict[int, str] = {}  # 1-based line -> comment text
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.removeprefix("#").strip()
    expected: list[str] = []
    prints = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
    ]
    for call in sorted(prints, key=lambda node: node.lineno):
        end = call.end_lineno or call.lineno
        if end in comments and lines[end - 1].lstrip()[:1] != "#":
            expected.append(comments[end])  # `print(...)  # what it prints`
        below = end + 1
        while below <= len(lines) and lines[below - 1].lstrip().startswith("#"):
            expected.append(comments[below])
            below += 1
    return [line for line in expected if line]


def find_in_order(output: str, expected: list[str]) -> str | None:
    """None when every expected line is in `output`, in order; else the first one missing."""
    position = 0
    for line in expected:
        pattern = ".*?".join(re.escape(part) for part in line.split("..."))
        found = re.compile(pattern).search(output, position)
        if found is None:
            return line
        position = found.end()
    return None


# -- the tests ------------------------------------------------------------------------------------


def test_every_member_readme_has_a_setup_and_an_example() -> None:
    assert not set(READMES) - set(SETUPS), "add the new README to SETUPS"
    for name, path in READMES.items():
        assert python_blocks(path.read_text(encoding="utf-8")), f"{name}: no ```python example"


def test_expected_output_is_read_from_comments() -> None:
    code = (
        'print("a")  # a\n'
        "x = 1  # not output\n"
        "print(\n"
        "    x,\n"
        ")\n"
        "# 1\n"
        "# two lines\n"
        "\n"
        "# a comment on what follows, not output\n"
        "if x:\n"
        "    print(x)  # 1 ... 3\n"
    )
    assert expected_output(code) == ["a", "1", "two lines", "1 ... 3"]
    assert find_in_order("a\n1\ntwo lines\n1 2 3\n", expected_output(code)) is None
    assert find_in_order("1 2 3\na\n", ["a", "1 ... 3"]) == "1 ... 3"


def _cases() -> list[object]:
    return [
        pytest.param(name, marks=[pytest.mark.slow] if SETUPS[name].slow else [], id=name)
        for name in READMES
        if name in SETUPS
    ]


@pytest.mark.parametrize("name", _cases())
def test_readme_examples_run(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    readme = READMES[name]
    setup = SETUPS[name]
    text = readme.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    for fixture in setup.needs:
        request.getfixturevalue(fixture)
    work = tmp_path / "work"
    work.mkdir()
    setup.prepare(work, request)

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT")
    }
    env |= {
        "FT_HOME": str(tmp_path / "ft_home"),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
    }
    if setup.runner == "pytest":
        script = work / "test_readme_examples.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", script.name]
    else:
        script = work / f"{name}_README.py"
        command = [sys.executable, script.name]
    script.write_text(as_script(text, blocks), encoding="utf-8")

    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    elapsed = time.perf_counter() - started
    where = f"{readme.relative_to(ROOT)} (script {script}: its line numbers are the README's)"
    report = f"\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    assert done.returncode == 0, f"{where} exited {done.returncode} after {elapsed:.0f} s{report}"
    if setup.runner == "python":
        expected = [line for block in blocks for line in expected_output(block.code)]
        missing = find_in_order(done.stdout, expected)
        assert missing is None, f"{where}: the output lacks {missing!r} (in this order){report}"
