"""`ft serve`: starts ft-server when it is installed, says how to install it when not."""

from __future__ import annotations

import importlib.util

from click.testing import CliRunner

from ft_cli import serve_cmd
from ft_cli.main import cli


def test_serve_says_how_to_install_the_server_when_it_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        serve_cmd.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ft_server" else real(name, *a),
    )
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1
    assert "pip install ft-server" in result.output


def test_serve_refuses_a_public_bind_without_a_key(tmp_path, monkeypatch):
    for var in ("FT_SERVER_API_KEY", "FT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "refusing to bind 0.0.0.0" in result.output


def test_serve_binds_loopback_by_default(monkeypatch, tmp_path):
    for var in ("FT_SERVER_API_KEY", "FT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    seen = {}
    monkeypatch.setattr("ft_server.main.serve", lambda settings: seen.update(s=settings))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "serve",
            "--port",
            "8123",
            "--allow-model",
            "run-*",
            "--backend",
            "torch",
            "--root-path",
            "/ft/",
        ],
    )
    assert result.exit_code == 0, result.output
    s = seen["s"]
    assert (s.host, s.port, s.inference_allow, s.inference_backend, s.api_key) == (
        "127.0.0.1",
        8123,
        ("run-*",),
        "torch",
        None,
    )
    assert s.root_path == "/ft"
    assert s.inference_compile is True  # ft serve compiles the decode step unless told not to
    result = CliRunner().invoke(cli, ["serve", "--no-compile"])
    assert result.exit_code == 0, result.output
    assert seen["s"].inference_compile is False
