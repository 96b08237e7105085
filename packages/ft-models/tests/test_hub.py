"""Hub downloads against the local Hub: the standard cache, revisions, offline, tokens, the
safetensors-only rule, trust_remote_code, search."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ft_config import write_passwords_file
from ft_models.hub import (
    HubAccessError,
    ModelError,
    NotCachedError,
    RemoteCodeError,
    UnsafeWeightsError,
    download_model,
    find_token,
    hub_model_info,
    search_models,
    wanted_files,
)
from ft_testing.hf_client import use_hf_endpoint, use_hf_home
from ft_testing.hub_server import LocalHub
from ft_testing.plugin import (
    HUB_TOKEN,
    PICKLE_ONLY_REPO,
    PRIVATE_LLAMA_REPO,
    TINY_BERT_REPO,
    TINY_LLAMA_REPO,
)

LLAMA_FILES = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture
def own_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """A LocalHub of the test's own (repos added here stay out of the session's hub)."""
    with LocalHub() as hub:
        use_hf_endpoint(monkeypatch, hub.url)
        use_hf_home(monkeypatch, tmp_path / "hf_home")
        yield hub


def file_gets(hub: LocalHub, repo_id: str) -> list[str]:
    return [r.path for r in hub.requests_for("GET", f"/{repo_id}/resolve/")]


def test_pull_lands_in_the_standard_cache_and_a_second_pull_fetches_nothing(
    hub_env: LocalHub, tmp_path: Path, tiny_llama: Path
) -> None:
    sha = hub_env.commit_sha(TINY_LLAMA_REPO)

    first = download_model(TINY_LLAMA_REPO, progress=False)

    snapshot = tmp_path / "hf_home" / "hub" / "models--ft-test--tiny-llama" / "snapshots" / sha
    assert first.path == snapshot
    assert first.commit == sha
    assert sorted(first.files) == LLAMA_FILES
    assert sorted(first.downloaded) == LLAMA_FILES
    assert first.size == sum((tiny_llama / name).stat().st_size for name in LLAMA_FILES)
    assert first.downloaded_bytes == first.size
    assert (snapshot / "model.safetensors").read_bytes() == (
        tiny_llama / "model.safetensors"
    ).read_bytes()
    assert (snapshot.parents[1] / "refs" / "main").read_text() == sha
    assert len(file_gets(hub_env, TINY_LLAMA_REPO)) == len(LLAMA_FILES)

    hub_env.clear_requests()
    second = download_model(TINY_LLAMA_REPO, progress=False)

    assert second.path == snapshot
    assert second.downloaded == ()
    assert second.downloaded_bytes == 0
    assert file_gets(hub_env, TINY_LLAMA_REPO) == []


def test_revision_argument_and_branch(own_hub: LocalHub, tiny_llama: Path) -> None:
    files = {p.name: p.read_bytes() for p in tiny_llama.iterdir()}
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "ft_marker": "v2"}).encode()
    repo = "ft-test/hub-revisions"
    main_sha = own_hub.add_repo(repo, tiny_llama)
    v2_sha = own_hub.add_revision(repo, files, "v2", tag=True)

    at_tag = download_model(repo, revision="v2", progress=False)
    at_main = download_model(repo, progress=False)
    at_commit = download_model(repo, revision=main_sha, progress=False)

    assert (at_tag.commit, at_main.commit, at_commit.commit) == (v2_sha, main_sha, main_sha)
    assert json.loads((at_tag.path / "config.json").read_text())["ft_marker"] == "v2"
    assert "ft_marker" not in json.loads((at_main.path / "config.json").read_text())
    with pytest.raises(ModelError, match=r"has no revision 'nope'"):
        download_model(repo, revision="nope", progress=False)


def test_offline_uses_the_cache_and_says_what_to_do_when_not_cached(
    hub_env: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = download_model(TINY_LLAMA_REPO, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_env.clear_requests()

    offline = download_model(TINY_LLAMA_REPO, progress=False)

    assert offline.path == online.path
    assert offline.offline
    assert sorted(offline.files) == LLAMA_FILES
    assert hub_env.requests == []
    with pytest.raises(NotCachedError) as raised:
        download_model(TINY_BERT_REPO, progress=False)
    assert str(raised.value).startswith(
        f"{TINY_BERT_REPO} is not in the cache and offline: run "
        f"`ft models pull {TINY_BERT_REPO}` with network"
    )
    assert hub_env.requests == []


def test_unreachable_hub_falls_back_to_the_cache(
    hub_env: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = download_model(TINY_LLAMA_REPO, progress=False)
    use_hf_endpoint(monkeypatch, "http://127.0.0.1:9")  # nothing listens there

    again = download_model(TINY_LLAMA_REPO, progress=False)

    assert again.path == online.path
    assert again.offline
    with pytest.raises(NotCachedError, match=r"cannot be reached"):
        download_model(TINY_BERT_REPO, progress=False)


def test_private_repo_needs_a_token(
    hub_env: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(HubAccessError) as raised:
        download_model(PRIVATE_LLAMA_REPO, progress=False)
    message = str(raised.value)
    assert message.startswith(f"{PRIVATE_LLAMA_REPO}: no such model on the Hub ({hub_env.url})")
    assert "`hf_token` in passwords.yml" in message
    assert "HF_TOKEN" in message
    assert file_gets(hub_env, PRIVATE_LLAMA_REPO) == []

    # From the project's passwords.yml (mode 0600)...
    write_passwords_file(tmp_path / "passwords.yml", {"hf_token": HUB_TOKEN})
    hub_env.clear_requests()
    from_file = download_model(PRIVATE_LLAMA_REPO, progress=False)
    assert sorted(from_file.files) == LLAMA_FILES
    sent = {r.headers.get("authorization") for r in hub_env.requests_for("GET")}
    assert sent == {f"Bearer {HUB_TOKEN}"}


def test_private_repo_with_hf_token_and_a_wrong_token(
    hub_env: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert download_model(PRIVATE_LLAMA_REPO, progress=False).commit == hub_env.commit_sha(
        PRIVATE_LLAMA_REPO
    )

    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_value")
    with pytest.raises(HubAccessError) as raised:
        download_model(TINY_BERT_REPO, progress=False)
    assert "refused the token from $HF_TOKEN (401" in str(raised.value)
    assert "hf_wrong_token_value" not in str(raised.value)


def test_find_token_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_token() == (None, None)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert find_token() == ("hf_from_env", "$HF_TOKEN")
    write_passwords_file(tmp_path / "passwords.yml", {"hf_token": "hf_from_file"})
    assert find_token() == ("hf_from_file", "passwords.yml")
    assert find_token("hf_given") == ("hf_given", "the token given")


def test_pickle_only_repo_is_refused_before_any_download(hub_env: LocalHub) -> None:
    with pytest.raises(UnsafeWeightsError) as raised:
        download_model(PICKLE_ONLY_REPO, progress=False)

    assert str(raised.value).startswith(
        f"The Hub repo {PICKLE_ONLY_REPO} has only pickle weights (pytorch_model.bin) and no "
        "safetensors. ft loads safetensors only"
    )
    assert file_gets(hub_env, PICKLE_ONLY_REPO) == []


def test_pickle_files_beside_safetensors_are_not_fetched(
    own_hub: LocalHub, tiny_llama: Path
) -> None:
    files = {p.name: p.read_bytes() for p in tiny_llama.iterdir()}
    own_hub.add_repo("ft-test/both", {**files, "pytorch_model.bin": b"junk", "extra.pt": b"x"})

    download = download_model("ft-test/both", progress=False)

    assert sorted(download.files) == LLAMA_FILES
    assert not (download.path / "pytorch_model.bin").exists()
    assert [p for p in file_gets(own_hub, "ft-test/both") if p.endswith((".bin", ".pt"))] == []


def test_wanted_files() -> None:
    files = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "consolidated.safetensors",
        "pytorch_model.bin",
        "original/consolidated.00.pth",
        "original/params.json",
        "tokenizer.model",
        "tokenizer.json",
        "vocab.txt",
        "chat_template.jinja",
        "modeling_custom.py",
        "README.md",
    ]
    assert wanted_files(files) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer.json",
        "vocab.txt",
        "chat_template.jinja",
    ]
    assert "modeling_custom.py" in wanted_files(files, trust_remote_code=True)


def custom_code_repo(tiny_llama: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in tiny_llama.iterdir()}
    config = json.loads(files["config.json"])
    config |= {
        "model_type": "ft_custom",
        "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"},
    }
    files["config.json"] = json.dumps(config).encode()
    files["modeling_custom.py"] = b"import os  # code that would run on load\n"
    return files


def test_custom_code_is_refused_without_the_opt_in(own_hub: LocalHub, tiny_llama: Path) -> None:
    own_hub.add_repo("ft-test/custom-code", custom_code_repo(tiny_llama))

    with pytest.raises(RemoteCodeError) as raised:
        download_model("ft-test/custom-code", progress=False)
    message = str(raised.value)
    assert message.startswith(
        "The Hub repo ft-test/custom-code needs its own Python code to load (config.json "
        "`auto_map`: modeling_custom.CustomForCausalLM; model_type 'ft_custom'"
    )
    assert "`model.trust_remote_code: true`" in message
    gets = file_gets(own_hub, "ft-test/custom-code")
    assert [p.rsplit("/", 1)[-1] for p in gets] == ["config.json"]

    trusted = download_model("ft-test/custom-code", trust_remote_code=True, progress=False)
    assert (trusted.path / "modeling_custom.py").is_file()


def test_auto_map_of_a_known_architecture_needs_no_opt_in(
    own_hub: LocalHub, tiny_llama: Path
) -> None:
    # Phi-3's config.json has an auto_map; transformers loads it with its own class.
    files = {p.name: p.read_bytes() for p in tiny_llama.iterdir()}
    config = json.loads(files["config.json"]) | {"auto_map": {"AutoConfig": "x.Config"}}
    own_hub.add_repo(
        "ft-test/known-auto-map", {**files, "config.json": json.dumps(config).encode()}
    )

    assert download_model("ft-test/known-auto-map", progress=False).commit


def test_model_info_without_downloading_weights(hub_env: LocalHub, tiny_llama: Path) -> None:
    info = hub_model_info(TINY_LLAMA_REPO)

    assert info.commit == hub_env.commit_sha(TINY_LLAMA_REPO)
    assert sorted(info.files) == LLAMA_FILES
    assert info.files["model.safetensors"] == (tiny_llama / "model.safetensors").stat().st_size
    assert (info.private, info.gated, info.downloads, info.likes) == (False, False, 1000, 10)
    assert info.parameters == 139_584
    assert info.config is not None and info.config["model_type"] == "llama"
    assert [p.rsplit("/", 1)[-1] for p in file_gets(hub_env, TINY_LLAMA_REPO)] == ["config.json"]


def test_search(hub_env: LocalHub) -> None:
    found = search_models("tiny", limit=10)
    assert [r.repo_id for r in found] == [TINY_LLAMA_REPO]  # text-generation only
    assert found[0].downloads == 1000
    assert found[0].parameters == 139_584
    assert "text-generation" in found[0].tags

    everything = search_models("ft-test", task=None, limit=10)
    assert [r.repo_id for r in everything] == [TINY_LLAMA_REPO, TINY_BERT_REPO, PICKLE_ONLY_REPO]
    assert everything[2].parameters is None  # no safetensors: the Hub reports no size

    small = search_models("ft-test", task=None, max_parameters=138_000)  # bert: 137,026
    assert [r.repo_id for r in small] == [TINY_BERT_REPO]


def test_a_download_shows_the_hub_progress_bars_even_after_transformers_hid_them(
    hub_env: LocalHub, capfd: pytest.CaptureFixture[str]
) -> None:
    """Commands call transformers' `disable_progress_bar` to hide its loading bars, which turns
    the Hub's off too; a download still shows its own, and leaves them as they were."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from huggingface_hub.utils import enable_progress_bars as restore

    disable_progress_bars()
    try:
        download_model(TINY_LLAMA_REPO, progress=True)
        assert are_progress_bars_disabled()
    finally:
        restore()
    bars = capfd.readouterr().err
    assert "Fetching 6 files" in bars and "100%" in bars
