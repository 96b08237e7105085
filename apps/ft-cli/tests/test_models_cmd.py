"""`ft models list|search|pull|info` as a user runs them, against the local Hub.

The group is invoked directly: its `ft.commands` entry point may not be registered in this
environment yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ft_cli.models_cmd import format_bytes, models, parse_size
from ft_models.catalog import CATALOG, training_memory
from ft_testing.hub_server import LocalHub
from ft_testing.plugin import PICKLE_ONLY_REPO, PRIVATE_LLAMA_REPO, TINY_BERT_REPO, TINY_LLAMA_REPO

LLAMA_FILES = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


def run(*args: str) -> Result:
    return CliRunner().invoke(models, list(args), catch_exceptions=False)


def run_json(*args: str) -> object:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_list_shows_the_catalog_with_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = run_json("list")

    assert [row["alias"] for row in data["catalog"]] == [e.alias for e in CATALOG]
    first = data["catalog"][0]
    assert first["alias"] == "smollm2-135m"
    assert first["parameters"] == 134_515_008
    assert first["embedded"] is True
    assert first["memory"] == training_memory(CATALOG[0].shape)
    assert first["fits"] is None
    assert data["memory_settings"] == {
        "batch_size": 1,
        "seq_len": 2048,
        "dtype": "bfloat16",
        "method_for_fits": "lora",
    }
    assert data["cached"]["hub"] == [] and data["cached"]["gguf"] == []

    text = run("list").output
    row = next(line.split() for line in text.splitlines() if "smollm2-135m" in line)
    assert row[:5] == ["smollm2-135m", "135M", "llama", "8,192", "apache-2.0"]
    assert "nothing yet: ft models pull NAME" in text


def test_list_filters_by_size_and_by_memory() -> None:
    small = run_json("list", "--max-params", "1B")
    assert {row["alias"] for row in small["catalog"]} == {
        e.alias for e in CATALOG if e.parameters <= 1_000_000_000
    }
    assert "gemma3-1b" in {row["alias"] for row in small["catalog"]}  # 999,812,736

    fitting = run_json("list", "--fits", "--memory", "8GB", "--method", "qlora")
    assert fitting["budget"] == {
        "bytes": 8 * 10**9,
        "source": "--memory",
        "usable_bytes": 7_200_000_000,
    }
    listed = {row["alias"] for row in fitting["catalog"]}
    expected = {e.alias for e in CATALOG if training_memory(e.shape)["qlora"] <= 7_200_000_000}  # type: ignore[operator]
    assert listed == expected
    assert "smollm2-135m" in listed and "qwen3-8b" not in listed
    assert all(row["fits"] is True for row in fitting["catalog"])

    bad = CliRunner().invoke(models, ["list", "--max-params", "huge"])
    assert bad.exit_code == 2
    assert "'huge' is not a parameter count: write it like 500M, 1.5B or 7e9" in bad.output


def test_pull_twice_then_list_the_cache(hub_env: LocalHub, tmp_path: Path) -> None:
    sha = hub_env.commit_sha(TINY_LLAMA_REPO)
    snapshot = tmp_path / "hf_home" / "hub" / "models--ft-test--tiny-llama" / "snapshots" / sha

    first = run("pull", TINY_LLAMA_REPO)
    assert first.exit_code == 0, first.output
    assert f"Downloaded {TINY_LLAMA_REPO} (6 files, " in first.output
    assert f"into {snapshot} (" in first.output

    hub_env.clear_requests()
    second = run_json("pull", TINY_LLAMA_REPO)
    assert second == {
        "name": TINY_LLAMA_REPO,
        "kind": "hub",
        "repo_id": TINY_LLAMA_REPO,
        "revision": None,
        "commit": sha,
        "path": str(snapshot),
        "size": sum((snapshot / name).stat().st_size for name in LLAMA_FILES),
        "downloaded": [],
        "downloaded_bytes": 0,
        "offline": False,
    }
    assert hub_env.requests_for("GET", f"/{TINY_LLAMA_REPO}/resolve") == []
    third = run("pull", TINY_LLAMA_REPO)
    assert third.stdout.startswith(
        f"Already in the cache, nothing downloaded: {TINY_LLAMA_REPO} at {snapshot}"
    )

    cached = run_json("list")["cached"]  # type: ignore[index]
    assert cached["hub"] == [
        {
            "repo_id": TINY_LLAMA_REPO,
            "alias": None,
            "size": second["size"],  # type: ignore[index]
            "revisions": [{"commit": sha, "refs": ["main"], "path": str(snapshot), "files": 6}],
        }
    ]
    assert f"  {TINY_LLAMA_REPO}  " in run("list").output


def test_pull_errors_are_user_errors(
    hub_env: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    pickles = CliRunner().invoke(models, ["pull", PICKLE_ONLY_REPO])
    assert pickles.exit_code == 1
    assert pickles.output.startswith(
        f"error: The Hub repo {PICKLE_ONLY_REPO} has only pickle weights (pytorch_model.bin)"
    )
    assert hub_env.requests_for("GET", f"/{PICKLE_ONLY_REPO}/resolve") == []

    private = CliRunner().invoke(models, ["pull", PRIVATE_LLAMA_REPO])
    assert private.exit_code == 1
    assert "`hf_token` in passwords.yml" in private.output

    unknown = CliRunner().invoke(models, ["pull", "no-such-alias"])
    assert unknown.exit_code == 1
    assert unknown.output.startswith("error: unknown model 'no-such-alias'")
    assert "Traceback" not in unknown.output

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = CliRunner().invoke(models, ["pull", TINY_BERT_REPO])
    assert offline.exit_code == 1
    assert offline.output.startswith(
        f"error: {TINY_BERT_REPO} is not in the cache and offline: run "
        f"`ft models pull {TINY_BERT_REPO}` with network"
    )


def test_search(hub_env: LocalHub) -> None:
    found = run_json("search", "ft-test", "--task", "any", "--limit", "2")
    assert [(r["repo_id"], r["downloads"], r["parameters"]) for r in found] == [  # type: ignore[union-attr]
        (TINY_LLAMA_REPO, 1000, 139_584),
        (TINY_BERT_REPO, 500, 137_026),
    ]
    assert found[0]["alias"] is None  # type: ignore[index]

    text = run("search", "tiny").output
    assert TINY_LLAMA_REPO in text and TINY_BERT_REPO not in text  # text-generation only
    assert "Download one with: ft models pull ORG/NAME" in text
    assert run("search", "nothing-like-this").output == (
        "No model on the Hub matches 'nothing-like-this' for text-generation\n"
    )


def test_info_of_a_hub_repo_downloads_no_weights(hub_env: LocalHub) -> None:
    info = run_json("info", TINY_LLAMA_REPO)

    assert info["kind"] == "hub"  # type: ignore[index]
    assert info["commit"] == hub_env.commit_sha(TINY_LLAMA_REPO)  # type: ignore[index]
    assert info["parameters"] == 139_584  # type: ignore[index]
    assert info["parameters_source"] == "the Hub's safetensors metadata"  # type: ignore[index]
    assert info["model_type"] == "llama"  # type: ignore[index]
    assert info["shape"]["num_layers"] == 2  # type: ignore[index]
    assert set(info["memory"]) == {"lora", "qlora", "full"}  # type: ignore[index]
    assert sorted(info["files"]) == LLAMA_FILES  # type: ignore[index]
    assert info["gated"] is False and info["custom_code"] is False  # type: ignore[index]
    gets = hub_env.requests_for("GET", f"/{TINY_LLAMA_REPO}/resolve")
    assert [r.path.rsplit("/", 1)[-1] for r in gets] == ["config.json"]

    text = run("info", TINY_LLAMA_REPO).output
    assert text.startswith(f"{TINY_LLAMA_REPO}  (hub)\n")
    assert "  parameters     140K (139,584, the Hub's safetensors metadata)" in text
    assert "Training memory (estimate, batch 1 x 2048 tokens, bfloat16)" in text


def test_info_of_a_catalog_alias_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = run_json("info", "llama3.2-1b")

    assert info["catalog"]["alias"] == "llama3.2-1b"  # type: ignore[index]
    assert info["gated"] is True and info["licence"] == "llama3.2"  # type: ignore[index]
    assert info["parameters"] == 1_235_814_400  # type: ignore[index]
    assert info["parameters_source"] == "computed from the catalog"  # type: ignore[index]
    assert info["notes"][0].startswith(  # type: ignore[index]
        "no Hub data: meta-llama/Llama-3.2-1B-Instruct is not in the cache and offline"
    )


def test_info_of_a_local_folder(tiny_llama: Path) -> None:
    info = run_json("info", str(tiny_llama))

    assert info["kind"] == "local"  # type: ignore[index]
    assert info["path"] == str(tiny_llama.resolve())  # type: ignore[index]
    assert info["parameters_source"] == "computed from config.json"  # type: ignore[index]
    assert info["shape"]["hidden_size"] == 64  # type: ignore[index]
    assert sorted(info["files"]) == LLAMA_FILES  # type: ignore[index]


def test_sizes() -> None:
    assert [parse_size(t) for t in ("16GB", "24 GiB", "8g", "512MB")] == [
        16 * 10**9,
        24 * 2**30,
        8 * 10**9,
        512 * 10**6,
    ]
    assert [format_bytes(n) for n in (512, 1_234_567, 269_000_000, 4_800_000_000)] == [
        "512 B",
        "1.2 MB",
        "269 MB",
        "4.8 GB",
    ]
