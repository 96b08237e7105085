"""The `ft` command as a user runs it: init, config, secrets, doctor, help."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from ft_cli import main as ft_main
from ft_cli.main import cli
from ft_config import app_paths, load_config, plugins


def run(*args: str, input: str | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def git(project: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(project), *args], capture_output=True, text=True, check=True
    ).stdout


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("init", "config", "doctor", "secrets"):
        assert f"\n  {command} " in result.output


def test_help_imports_no_heavy_module():
    code = (
        "import sys\n"
        "from ft_cli.main import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='ft')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlx', 'mlx_lm', 'transformers', 'peft'))\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "Commands:" in out
    assert out.strip().splitlines()[-1] == "HEAVY []"


def test_typo_suggests_the_command():
    result = CliRunner().invoke(cli, ["confg"])
    assert result.exit_code == 2
    assert "no command 'confg'. Did you mean 'ft config'?" in result.output


def test_version_lists_ft_packages():
    result = run("--version")
    assert result.output.startswith("ft 0.1.0\n")
    assert "ft-config 0.1.0" in result.output


# --- ft init ----------------------------------------------------------------------------------


def test_init_writes_the_project_and_commits_the_configs(tmp_path):
    project = tmp_path / "proj"
    result = run("init", str(project))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in project.iterdir()) == [
        ".ft",
        ".git",
        ".gitignore",
        "data",
        "passwords.yml",
        "train.yml",
    ]
    assert stat.S_IMODE((project / "passwords.yml").stat().st_mode) == 0o600
    text = (project / "train.yml").read_text()
    assert text.startswith("# yaml-language-server: $schema=.ft/train.schema.json\n")
    assert "profile: chat" in text and "\n  # LoRA rank r" in text
    config = load_config(project / "train.yml")
    assert config == load_config(profile="chat")
    schema = json.loads((project / ".ft" / "train.schema.json").read_text())
    assert schema["title"] == "ft train.yml"
    # One commit with the configs; the secrets file is ignored, never committed.
    assert git(project, "log", "--format=%s").splitlines() == [
        "ft init: training config (profile chat)"
    ]
    assert sorted(git(project, "ls-files").split()) == [
        ".ft/train.schema.json",
        ".gitignore",
        "data/train.jsonl",
        "train.yml",
    ]
    assert git(project, "check-ignore", "passwords.yml").strip() == "passwords.yml"
    assert git(project, "status", "--porcelain") == ""
    rows = [
        json.loads(line) for line in (project / "data" / "train.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 12 and rows[0]["messages"][0]["role"] == "user"


@pytest.mark.parametrize(
    ("profile", "key"), [("instruction", "instruction"), ("code", "messages"), ("domain", "text")]
)
def test_init_profiles_write_matching_config_and_data(tmp_path, profile, key):
    result = run("init", str(tmp_path), "--profile", profile, "--no-git")
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "train.yml") == load_config(profile=profile)
    first = json.loads((tmp_path / "data" / "train.jsonl").read_text().splitlines()[0])
    assert key in first
    assert not (tmp_path / ".git").exists()


def test_init_refuses_to_overwrite_and_force_keeps_secrets(tmp_path):
    assert run("init", str(tmp_path), "--no-git").exit_code == 0
    (tmp_path / "passwords.yml").write_text("hf_token: hf_keepme\n")
    result = CliRunner().invoke(cli, ["init", str(tmp_path), "--no-git"])
    assert result.exit_code == 1
    assert (
        f"error: {tmp_path / 'train.yml'} already exists; use --force to replace it"
        in result.output
    )
    result = run("init", str(tmp_path), "--no-git", "--force", "--profile", "domain")
    assert result.exit_code == 0
    assert (tmp_path / "passwords.yml").read_text() == "hf_token: hf_keepme\n"
    assert "profile: domain" in (tmp_path / "train.yml").read_text()


def test_init_inside_a_repository_does_not_nest_one(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    result = run("init", str(tmp_path / "sub"))
    assert result.exit_code == 0
    assert not (tmp_path / "sub" / ".git").exists()
    assert "in a git repository already" in result.output


def test_init_unknown_profile(tmp_path):
    result = CliRunner().invoke(cli, ["init", str(tmp_path), "--profile", "chatt"])
    assert result.exit_code == 1
    assert "error: --profile chatt: no profile 'chatt'; did you mean 'chat'?" in result.output
    assert not (tmp_path / "train.yml").exists()


def test_init_appends_to_an_existing_gitignore(tmp_path):
    (tmp_path / ".gitignore").write_text("node_modules/\npasswords.yml\n")
    run("init", str(tmp_path), "--no-git")
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["node_modules/", "passwords.yml"]
    assert lines.count("passwords.yml") == 1 and "runs/" in lines


# --- ft config --------------------------------------------------------------------------------


def test_config_validate_reports_file_line_key(tmp_path):
    path = tmp_path / "train.yml"
    path.write_text("training:\n  epochs: 1\n  learning_rate: fast\nmethod:\n  rnak: 8\n")
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: {path}:3: training.learning_rate: expected a number, got 'fast'",
        f"       {path}:5: method.rnak: unknown key (did you mean 'rank'?)",
        f"       details in {app_paths().logs / 'ft.log'}",
    ]


def test_config_validate_ok_and_with_overrides(tmp_path):
    path = tmp_path / "train.yml"
    path.write_text("profile: chat\n")
    result = run("config", "validate", str(path), "--set", "training.epochs=1")
    assert result.exit_code == 0
    assert result.output == f"{path} is valid (profile chat; 7 settings differ from the defaults)\n"
    result = CliRunner().invoke(
        cli, ["config", "validate", str(path), "--set", "training.epochs=lots"]
    )
    assert result.output == (
        "error: --set training.epochs=lots: training.epochs: expected a number, got 'lots'\n"
        f"       details in {app_paths().logs / 'ft.log'}\n"
    )


def test_config_validate_refuses_python_tags(tmp_path):
    path = tmp_path / "train.yml"
    path.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 1
    assert "refusing the YAML tag" in result.output
    assert not (Path.cwd() / "pwned").exists()


def test_config_show_merges_everything(tmp_path):
    path = tmp_path / "train.yml"
    path.write_text("profile: domain\ntraining:\n  epochs: 2\n")
    result = run("config", "show", str(path), "--set", "method.rank=4", "--format", "json")
    shown = json.loads(result.output)
    assert shown["profile"] == "domain"
    assert shown["data"]["format"] == "text"
    assert shown["training"]["epochs"] == 2
    assert shown["method"]["rank"] == 4
    yaml_out = run("config", "show", str(path)).output
    assert "learning_rate: 5.0e-05" in yaml_out


def test_config_schema(tmp_path):
    schema = json.loads(run("config", "schema").output)
    assert set(schema["properties"]) == {
        "profile",
        "model",
        "data",
        "method",
        "training",
        "resources",
        "output",
        "logging",
        "tune",
    }
    out = tmp_path / "ref.md"
    run("config", "schema", "--markdown", "-o", str(out))
    assert out.read_text().startswith("# train.yml reference")


# --- ft secrets -------------------------------------------------------------------------------


def test_secrets_set_list_encrypt_decrypt(tmp_path):
    file = str(tmp_path / "passwords.yml")
    result = run("secrets", "set", "hf_token", "--file", file, input="hf_abcdef123\n")
    assert result.exit_code == 0 and "hf_abcdef123" not in result.output
    assert stat.S_IMODE(Path(file).stat().st_mode) == 0o600
    listed = run("secrets", "list", "--file", file, env={"WANDB_API_KEY": "wk_1234"}).output
    assert "hf_token       set (from passwords.yml)" in listed
    assert "wandb_api_key  set (from $WANDB_API_KEY)" in listed
    assert "hf_abcdef123" not in listed and "wk_1234" not in listed
    assert run("secrets", "encrypt", "--file", file, env={"FT_PASSPHRASE": "pw"}).exit_code == 0
    assert "hf_abcdef123" not in Path(file).read_text()
    locked = CliRunner().invoke(
        cli, ["secrets", "list", "--file", file], env={"FT_PASSPHRASE": None}
    )
    assert locked.exit_code == 1 and "is encrypted: give the passphrase" in locked.output
    assert (
        "set (from passwords.yml)"
        in run("secrets", "list", "--file", file, env={"FT_PASSPHRASE": "pw"}).output
    )
    assert run("secrets", "decrypt", "--file", file, env={"FT_PASSPHRASE": "pw"}).exit_code == 0
    assert "hf_token: hf_abcdef123" in Path(file).read_text()


def test_group_readable_passwords_file_is_refused(tmp_path):
    file = tmp_path / "passwords.yml"
    file.write_text("hf_token: hf_x1234\n")
    file.chmod(0o644)
    result = CliRunner().invoke(cli, ["secrets", "list", "--file", str(file)])
    assert result.exit_code == 1
    assert f"Run: chmod 600 {file}" in result.output


# --- plugins ----------------------------------------------------------------------------------


def test_a_broken_plugin_warns_instead_of_crashing(monkeypatch):
    eps = dict(ft_main.command_entry_points())
    eps["broken"] = metadata.EntryPoint("broken", "no_such_module_xyz:cmd", "ft.commands")
    monkeypatch.setattr(ft_main, "command_entry_points", lambda: eps)
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "warning: command 'broken' (no_such_module_xyz:cmd) failed to load" in result.output
    assert "\n  init " in result.output


PLUGIN_COMMAND = '''
import click

@click.command()
def hello():
    """Say hello from a plugin."""
    click.echo("hello from acme")
'''


def test_a_plugin_command_comes_through_entry_points(monkeypatch, tmp_path):
    (tmp_path / "acme_ft_commands.py").write_text(PLUGIN_COMMAND, encoding="utf-8")
    dist_info = tmp_path / "acme_ft_commands-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-ft-commands\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        "[ft.commands]\nhello = acme_ft_commands:hello\ninit = acme_ft_commands:hello\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FT_NO_PLUGINS", raising=False)

    def fresh_discovery():
        plugins.cache_clear()
        ft_main.command_entry_points.cache_clear()

    fresh_discovery()
    try:
        result = CliRunner().invoke(cli, ["--help"])
        assert result.exit_code == 0
        assert "Say hello from a plugin." in result.output
        assert (
            "warning: ft.commands plugin 'init' (acme_ft_commands:hello, from distribution "
            "acme-ft-commands) ignored: the name is taken by ft_cli.init:init" in result.output
        )
        assert run("hello").output == "hello from acme\n"
        monkeypatch.setenv("FT_NO_PLUGINS", "1")
        fresh_discovery()
        result = CliRunner().invoke(cli, ["--help"])
        assert "hello" not in result.output
        assert "warning" not in result.output
    finally:
        monkeypatch.undo()
        fresh_discovery()


# --- ft doctor --------------------------------------------------------------------------------


@pytest.mark.slow
def test_doctor_reports_backends_as_json():
    result = run("doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["system"]["cores"] == os.cpu_count()
    assert report["torch"]["ok"] and report["torch"]["works"]
    assert report["torch"]["device"] in ("cpu", "cuda", "mps")
    assert report["usable_backends"]
    assert report["paths"]["home"] == os.environ["FT_HOME"]
    text = run("doctor").output
    assert "Ready to train with:" in text and "torch" in text
