"""The local Hub against the real huggingface_hub client (and transformers through it)."""

import hashlib
import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ft_testing.hf_client import use_hf_endpoint, use_hf_home
from ft_testing.hub_server import LocalHub
from ft_testing.plugin import (
    HUB_TOKEN,
    PICKLE_ONLY_REPO,
    PRIVATE_LLAMA_REPO,
    TINY_BERT_REPO,
    TINY_LLAMA_REPO,
    TinyModelFactory,
)

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
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
    """A LocalHub of the test's own, empty, with the client pointed at it."""
    with LocalHub() as hub:
        use_hf_endpoint(monkeypatch, hub.url)
        use_hf_home(monkeypatch, tmp_path / "hf_home")
        yield hub


def test_model_info_with_siblings(hub_env: LocalHub, tiny_llama: Path) -> None:
    info = HfApi().model_info(TINY_LLAMA_REPO, files_metadata=True)

    assert info.id == TINY_LLAMA_REPO
    assert info.sha == hub_env.commit_sha(TINY_LLAMA_REPO)
    assert (info.private, info.gated, info.downloads, info.likes) == (False, False, 1000, 10)
    assert info.pipeline_tag == "text-generation"
    assert info.library_name == "transformers"
    assert info.config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    assert info.safetensors is not None and info.safetensors.total == 139_584
    assert [s.rfilename for s in info.siblings or []] == LLAMA_FILES
    for sibling in info.siblings or []:
        data = (tiny_llama / sibling.rfilename).read_bytes()
        assert sibling.size == len(data)
        if sibling.rfilename == "model.safetensors":
            assert sibling.lfs is not None
            assert sibling.lfs.sha256 == hashlib.sha256(data).hexdigest()
        else:
            assert sibling.lfs is None
            assert sibling.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_list_repo_files_and_tree(hub_env: LocalHub) -> None:
    api = HfApi()

    assert api.list_repo_files(TINY_LLAMA_REPO) == LLAMA_FILES
    assert api.list_repo_files(PICKLE_ONLY_REPO) == ["config.json", "pytorch_model.bin"]
    tree = {entry.path: entry for entry in api.list_repo_tree(TINY_BERT_REPO)}
    assert sorted(tree) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert tree["model.safetensors"].lfs is not None
    assert tree["model.safetensors"].xet_hash is None


def test_hf_hub_download_then_from_cache(hub_env: LocalHub, tiny_llama: Path) -> None:
    first = hf_hub_download(TINY_LLAMA_REPO, "model.safetensors")
    second = hf_hub_download(TINY_LLAMA_REPO, "model.safetensors")

    assert Path(first).read_bytes() == (tiny_llama / "model.safetensors").read_bytes()
    assert second == first
    assert Path(first).is_relative_to(os.environ["HF_HOME"])
    path = f"/{TINY_LLAMA_REPO}/resolve/main/model.safetensors"
    # The second call only checks the ETag (HEAD); the bytes come from the cache.
    assert len(hub_env.requests_for("HEAD", path)) == 2
    assert len(hub_env.requests_for("GET", path)) == 1


def test_download_is_plain_http_not_xet(hub_env: LocalHub) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    metadata = get_hf_file_metadata(hf_hub_url(TINY_LLAMA_REPO, "model.safetensors"))

    assert metadata.xet_file_data is None
    assert metadata.commit_hash == hub_env.commit_sha(TINY_LLAMA_REPO)
    assert metadata.location == f"{hub_env.url}/{TINY_LLAMA_REPO}/resolve/main/model.safetensors"


def test_resume_with_a_range_request(hub_env: LocalHub, tiny_llama: Path) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get

    data = (tiny_llama / "tokenizer.json").read_bytes()
    partial = io.BytesIO(data[:1000])
    partial.seek(1000)

    http_get(
        hf_hub_url(TINY_LLAMA_REPO, "tokenizer.json"),
        partial,
        resume_size=1000,
        expected_size=len(data),
    )

    assert partial.getvalue() == data
    (request,) = hub_env.requests_for("GET", f"/{TINY_LLAMA_REPO}/resolve/")
    assert request.headers["range"] == "bytes=1000-"


def test_range_responses(hub_env: LocalHub, tiny_llama: Path) -> None:
    data = (tiny_llama / "config.json").read_bytes()
    url = f"{hub_env.url}/{TINY_LLAMA_REPO}/resolve/main/config.json"

    def get(range_header: str) -> tuple[int, str | None, bytes]:
        request = urllib.request.Request(url, headers={"Range": range_header})
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers["Content-Range"], response.read()

    assert get("bytes=10-19") == (206, f"bytes 10-19/{len(data)}", data[10:20])
    assert get("bytes=-5") == (206, f"bytes {len(data) - 5}-{len(data) - 1}/{len(data)}", data[-5:])
    with pytest.raises(urllib.error.HTTPError) as error:
        get(f"bytes={len(data)}-")
    assert error.value.code == 416


def test_snapshot_download_and_from_pretrained(hub_env: LocalHub, tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    jsons = snapshot_download(TINY_LLAMA_REPO, allow_patterns=["*.json"])
    assert sorted(p.name for p in Path(jsons).iterdir()) == [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    snapshot = snapshot_download(TINY_LLAMA_REPO)
    assert Path(snapshot).name == hub_env.commit_sha(TINY_LLAMA_REPO)
    assert sorted(p.name for p in Path(snapshot).iterdir()) == LLAMA_FILES

    model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA_REPO)
    tokenizer = AutoTokenizer.from_pretrained(TINY_LLAMA_REPO)
    local = AutoModelForCausalLM.from_pretrained(tiny_llama)
    batch = tokenizer("Hello world", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, local(**batch).logits)


def test_revisions(own_hub: LocalHub) -> None:
    v1 = own_hub.add_repo("me/model", {"config.json": b'{"v": 1}'})
    own_hub.add_revision("me/model", {"config.json": b'{"v": 1}'}, "v1.0", tag=True)
    v2 = own_hub.add_revision("me/model", {"config.json": b'{"v": 2}', "extra.txt": b"x"}, "main")
    api = HfApi()

    assert v1 != v2
    assert api.model_info("me/model").sha == v2
    assert api.model_info("me/model", revision=v1).sha == v1
    assert api.model_info("me/model", revision=v1[:7]).sha == v1
    assert api.list_repo_files("me/model", revision=v1) == ["config.json"]
    assert Path(hf_hub_download("me/model", "config.json")).read_bytes() == b'{"v": 2}'
    assert (
        Path(hf_hub_download("me/model", "config.json", revision="v1.0")).read_bytes()
        == b'{"v": 1}'
    )
    assert Path(hf_hub_download("me/model", "config.json", revision=v1)).read_bytes() == b'{"v": 1}'
    refs = api.list_repo_refs("me/model")
    assert [(ref.name, ref.target_commit) for ref in refs.branches] == [("main", v2)]
    assert [(ref.ref, ref.target_commit) for ref in refs.tags] == [
        ("refs/tags/v1.0", own_hub.commit_sha("me/model", "v1.0"))
    ]


def test_commit_sha_is_deterministic() -> None:
    files = {"config.json": b"{}"}

    assert LocalHub().add_repo("a/b", files) == LocalHub().add_repo("a/b", files)
    assert LocalHub().add_repo("a/b", files) != LocalHub().add_repo("a/c", files)
    assert LocalHub().add_repo("a/b", files) != LocalHub().add_repo("a/b", {"config.json": b"[]"})


def test_typed_errors(hub_env: LocalHub) -> None:
    api = HfApi()

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("ft-test/no-such-model")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("ft-test/no-such-model", "config.json")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(TINY_LLAMA_REPO, "no-such-file.json")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(TINY_LLAMA_REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(TINY_LLAMA_REPO, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(TINY_LLAMA_REPO, path_in_repo="no-such-folder"))


def test_private_repo_needs_the_token(hub_env: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    api = HfApi()

    with pytest.raises(RepositoryNotFoundError) as error:
        api.model_info(PRIVATE_LLAMA_REPO)
    assert error.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(PRIVATE_LLAMA_REPO, "config.json")
    assert PRIVATE_LLAMA_REPO not in [m.id for m in api.list_models(author="ft-test")]

    assert api.model_info(PRIVATE_LLAMA_REPO, token=HUB_TOKEN).private is True
    assert Path(hf_hub_download(PRIVATE_LLAMA_REPO, "config.json", token=HUB_TOKEN)).is_file()
    (get,) = hub_env.requests_for("GET", f"/{PRIVATE_LLAMA_REPO}/resolve/")
    assert get.headers["authorization"] == f"Bearer {HUB_TOKEN}"

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)  # the client's implicit token
    assert HfApi().model_info(PRIVATE_LLAMA_REPO).id == PRIVATE_LLAMA_REPO


def test_unknown_token_is_refused(hub_env: LocalHub) -> None:
    with pytest.raises(HfHubHTTPError) as error:
        HfApi().model_info(TINY_LLAMA_REPO, token="hf_not_a_token")

    assert error.value.response.status_code == 401
    assert (
        error.value.response.headers["X-Error-Message"]
        == "Invalid credentials in Authorization header"
    )


def test_gated_repo_shows_metadata_but_not_files(own_hub: LocalHub) -> None:
    own_hub.add_repo("me/gated", {"config.json": b"{}"}, gated=True, token="hf_gate")

    assert HfApi().model_info("me/gated").gated == "manual"
    with pytest.raises(GatedRepoError):
        hf_hub_download("me/gated", "config.json")
    assert Path(hf_hub_download("me/gated", "config.json", token="hf_gate")).read_bytes() == b"{}"


def test_list_models(hub_env: LocalHub) -> None:
    api = HfApi()

    def ids(**kwargs: object) -> list[str]:
        return [model.id for model in api.list_models(**kwargs)]  # type: ignore[arg-type]

    assert ids(search="tiny") == [TINY_LLAMA_REPO, TINY_BERT_REPO]
    assert ids(search="TINY", sort="likes") == [TINY_BERT_REPO, TINY_LLAMA_REPO]
    assert ids(author="ft-test", sort="downloads", limit=2) == [TINY_LLAMA_REPO, TINY_BERT_REPO]
    assert ids(author="ft-test") == [TINY_LLAMA_REPO, TINY_BERT_REPO, PICKLE_ONLY_REPO]
    assert ids(filter="text-classification") == [TINY_BERT_REPO]
    assert ids(pipeline_tag="text-generation", search="llama") == [TINY_LLAMA_REPO]
    assert ids(search="nothing-like-this") == []
    assert ids(author="ft-test", token=HUB_TOKEN)[2] == PRIVATE_LLAMA_REPO
    (bert,) = api.list_models(search="tiny-bert", full=True)
    assert (bert.downloads, bert.likes, bert.pipeline_tag) == (500, 20, "text-classification")
    assert [s.rfilename for s in bert.siblings or []] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_subprocesses_use_the_local_hub(hub_env: LocalHub) -> None:
    code = "from huggingface_hub import HfApi; print(HfApi().model_info('ft-test/tiny-bert').sha)"

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )

    assert result.stdout.strip() == hub_env.commit_sha(TINY_BERT_REPO)


def test_hub_env_is_undone_after_the_test(local_hub: LocalHub, tmp_path: Path) -> None:
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api

    before = (
        constants.ENDPOINT,
        constants.HF_HUB_CACHE,
        hf_api.api.endpoint,
        os.environ.get("HF_ENDPOINT"),
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hf_endpoint(monkeypatch, local_hub.url)
        use_hf_home(monkeypatch, tmp_path / "hf_home")
        assert constants.ENDPOINT == hf_api.api.endpoint == local_hub.url
        assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(local_hub.url + "/")
        assert Path(constants.HF_HUB_CACHE) == tmp_path / "hf_home" / "hub"

    assert (
        constants.ENDPOINT,
        constants.HF_HUB_CACHE,
        hf_api.api.endpoint,
        os.environ.get("HF_ENDPOINT"),
    ) == before


def test_a_folder_is_served_as_is(own_hub: LocalHub, tiny_model_factory: TinyModelFactory) -> None:
    bert = tiny_model_factory("bert")
    own_hub.add_repo("me/bert", bert)

    snapshot = Path(snapshot_download("me/bert"))

    for file in bert.iterdir():
        assert (snapshot / file.name).read_bytes() == file.read_bytes()


def test_unserved_endpoints_say_so(hub_env: LocalHub) -> None:
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{hub_env.url}/api/spaces")

    assert error.value.code == 501
    assert error.value.headers["X-Error-Message"] == "ft's LocalHub does not serve GET /api/spaces"


def test_dataset_repos(own_hub: LocalHub) -> None:
    sha = own_hub.add_repo("me/data", {"train.jsonl": b'{"text": "hi"}\n'}, repo_type="dataset")
    api = HfApi()

    assert api.dataset_info("me/data").sha == sha
    assert [d.id for d in api.list_datasets(search="data")] == ["me/data"]
    assert [m.id for m in api.list_models()] == []
    path = hf_hub_download("me/data", "train.jsonl", repo_type="dataset")
    assert Path(path).read_bytes() == b'{"text": "hi"}\n'
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/data", "train.jsonl")  # a model repo of that name does not exist


def test_whoami(hub_env: LocalHub) -> None:
    assert HfApi().whoami(token=HUB_TOKEN)["name"] == "ft-test"
    with pytest.raises(HfHubHTTPError):
        HfApi().whoami(token="hf_not_a_token")
