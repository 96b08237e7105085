"""`ft dataset` names models as `ft train` does: train.yml's model, the default model, a Hub
repo with the token of passwords.yml, a .gguf file; run as a user types it, in a new project."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ft_cli.main import cli
from ft_config.schema import DEFAULT_MODEL
from ft_data import PreparedDataset, load_tokenizer
from ft_models.resolve import gguf_import_folder
from ft_testing.hub_server import LocalHub
from ft_testing.plugin import HUB_TOKEN, PRIVATE_LLAMA_REPO


def ft(*args: str | Path) -> Result:
    """`ft ARGS` in the current folder; stdout and stderr apart."""
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def ft_json(*args: str | Path) -> tuple[dict[str, Any], str]:
    """The JSON `ft ARGS --json` prints, and what it said on stderr."""
    result = ft(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def use_model(project: Path, name: str) -> None:
    """Set train.yml's `model: name:` (the file stays as `ft init` wrote it otherwise)."""
    config = project / "train.yml"
    text, found = re.subn(
        r"(?m)^(model:\n(?:  #.*\n)*  name: ).*$", rf"\g<1>{name}", config.read_text()
    )
    assert found == 1, "train.yml has no model.name"
    config.write_text(text, encoding="utf-8")


def fingerprint(prepared: str) -> str:
    with PreparedDataset(prepared) as data:
        return str(data.attrs["tokenizer_fingerprint"])


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Path) -> Path:
    """`ft init proj` with train.yml's model set to the tiny Llama; the current folder."""
    monkeypatch.chdir(tmp_path)
    created = ft("init", "proj")
    assert created.exit_code == 0, created.output
    use_model(tmp_path / "proj", str(tiny_llama))
    monkeypatch.chdir(tmp_path / "proj")
    return tmp_path / "proj"


def test_a_new_project_prepares_inspects_and_describes_with_its_model(
    project: Path, tiny_llama: Path
) -> None:
    tokenizer = load_tokenizer(tiny_llama)
    rows = (project / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()

    prepared, said = ft_json("dataset", "prepare", "data/train.jsonl")
    assert said == f"model: {tiny_llama} (model.name of train.yml)\n"
    assert (prepared["model"], prepared["rows_read"]) == (str(tiny_llama), len(rows))
    assert prepared["examples"] > 0 and prepared["template"] == "tokenizer"
    assert fingerprint(prepared["output"]) == tokenizer.fingerprint

    shown, _ = ft_json("dataset", "inspect", "data/train.jsonl", "-n", "2")
    for example, line in zip(shown["examples"], rows, strict=False):
        answer = json.loads(line)["messages"][-1]["content"]
        trained = "".join(example["text"][start:end] for start, end in example["trained_spans"])
        assert example["status"] == "kept" and trained.startswith(answer)
        assert example["tokens"] == len(tokenizer.tokenizer.encode(example["text"]).ids)

    described, _ = ft_json("dataset", "stats", "data/train.jsonl")
    assert described["prepared"] == prepared["output"]  # the same tokenizer and settings
    assert described["tokens"]["total"] == prepared["tokens"]

    # Without SRC, train.yml's data.train: the same file again.
    again, _ = ft_json("dataset", "prepare")
    assert (again["output"], again["reused"]) == (prepared["output"], True)


def test_a_private_hub_model_with_the_token_of_passwords_yml(
    project: Path, hub_env: LocalHub, tiny_llama: Path
) -> None:
    use_model(project, PRIVATE_LLAMA_REPO)
    refused = ft("dataset", "prepare", "data/train.jsonl")
    assert refused.exit_code == 1 and "`hf_token` in passwords.yml" in refused.stderr

    passwords = project / "passwords.yml"
    passwords.write_text(  # keeps the file's 0600
        passwords.read_text().replace("hf_token:\n", f"hf_token: {HUB_TOKEN}\n"), encoding="utf-8"
    )
    prepared, said = ft_json("dataset", "prepare", "data/train.jsonl")
    assert f"\nmodel: {PRIVATE_LLAMA_REPO} -> " in "\n" + said  # a line of its own
    assert f"(model.name of train.yml; Hub repo {PRIVATE_LLAMA_REPO} (downloaded " in said
    assert prepared["model"] == PRIVATE_LLAMA_REPO
    assert fingerprint(prepared["output"]) == load_tokenizer(tiny_llama).fingerprint


@pytest.mark.slow
def test_without_train_yml_the_default_model_is_the_embedded_smollm2(
    smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the alias resolves to the GGUF ft carries
    monkeypatch.chdir(tmp_path)
    chat = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello there."}]
    (tmp_path / "data.jsonl").write_text(json.dumps({"messages": chat}) + "\n", encoding="utf-8")

    prepared, said = ft_json("dataset", "prepare", "data.jsonl")
    folder = gguf_import_folder(smollm2_gguf)
    assert f"\nmodel: {DEFAULT_MODEL} -> {folder} (" in "\n" + said  # a line of its own
    assert "(the default: no --model, and no train.yml here; catalog alias" in said
    assert "embedded GGUF (offline: HF_HUB_OFFLINE is set)" in said
    assert (prepared["model"], prepared["examples"]) == (DEFAULT_MODEL, 1)
    imported = load_tokenizer(folder)
    assert fingerprint(prepared["output"]) == imported.fingerprint

    # The .gguf file itself names the same model: imported once, then reused.
    shown, said = ft_json("dataset", "inspect", "data.jsonl", "--model", smollm2_gguf)
    assert "(already imported into" in said
    [example] = shown["examples"]
    trained = "".join(example["text"][start:end] for start, end in example["trained_spans"])
    assert example["text"].startswith("<|im_start|>system\n") and trained == (
        "Hello there.<|im_end|>"
    )
