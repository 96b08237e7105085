"""Models from the Hugging Face Hub: download, offline use, tokens, safety checks and search.

Downloads go through `huggingface_hub.snapshot_download` into its standard cache
(`$HF_HOME/hub`, `~/.cache/huggingface/hub` by default), so transformers, mlx-lm, vLLM and the
`hf` CLI share them with ft. A download is resumable (an interrupted file continues where it
stopped) and, once complete, works offline.

Rules:

- Safetensors only. Pickle weights (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl`) can run code
  when loaded, so they are never fetched, and a repo that has nothing else is refused before
  anything is downloaded.
- Custom model code runs only when the caller turns `trust_remote_code` on for that model. A
  config.json with `auto_map` whose `model_type` transformers does not ship is refused without
  it; a known `model_type` (Phi-3 ships an `auto_map` too) loads with transformers' own code.
- The token comes from `hf_token` in the project's passwords.yml, then `$HF_TOKEN`, and is passed
  to huggingface_hub explicitly. It never appears in a message or a log line.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from ft_models.shape import FAMILIES

ALLOW_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.json",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",
)
"""What a download fetches: weights in safetensors, configs, tokenizer files, chat templates."""

PICKLE_PATTERNS: tuple[str, ...] = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
"""Weights that are Python pickles: never fetched."""

IGNORE_PATTERNS: tuple[str, ...] = (
    *PICKLE_PATTERNS,
    # Duplicates of the weights in other layouts: Mistral's own format beside the HF shards,
    # Meta's originals, ONNX exports. Fetching them would double the download.
    "consolidated*.safetensors",
    "original/*",
    "onnx/*",
    "*.onnx",
    "*.gguf",
    "*.h5",
    "*.msgpack",
)
CODE_PATTERNS: tuple[str, ...] = ("*.py",)
"""Fetched only with trust_remote_code on."""

REMOTE_CODE_SETTING = "model.trust_remote_code: true"


class ModelError(Exception):
    """A model cannot be found, fetched or used; the message says why and what to do."""


class NotCachedError(ModelError):
    """Offline (or the Hub is unreachable) and the model is not in the cache."""


class HubAccessError(ModelError):
    """The Hub refused access: a private or gated repo, a missing or bad token."""


class UnsafeWeightsError(ModelError):
    """The repo or folder has pickle weights only."""


class RemoteCodeError(ModelError):
    """The model needs its own Python code, and trust_remote_code is off."""


class HubUnreachableError(ModelError):
    """The Hub did not answer (no network, a timeout, offline mode)."""


@attrs.frozen
class Download:
    """A Hub model in the local cache."""

    repo_id: str
    revision: str | None
    """What was asked for: a branch, tag or commit (None: the default branch)."""
    commit: str
    path: Path
    """The snapshot folder: `$HF_HOME/hub/models--org--name/snapshots/<commit>/`."""
    files: dict[str, int]
    """Repo path -> size in bytes, of every file in the snapshot ft uses."""
    downloaded: tuple[str, ...]
    """The files this call fetched; empty when everything was already cached."""
    offline: bool
    """True when the Hub was not asked (offline mode, or unreachable and served from cache)."""

    @property
    def size(self) -> int:
        return sum(self.files.values())

    @property
    def downloaded_bytes(self) -> int:
        return sum(self.files.get(name, 0) for name in self.downloaded)


@attrs.frozen
class HubModel:
    """What the Hub says about a model repo, without downloading its weights."""

    repo_id: str
    commit: str | None
    files: dict[str, int | None]
    """Repo path -> size in bytes (None where the Hub did not say)."""
    private: bool
    gated: bool | str
    licence: str | None
    downloads: int | None
    likes: int | None
    tags: tuple[str, ...]
    pipeline_tag: str | None
    parameters: int | None
    """From the Hub's safetensors metadata, when it has some."""
    config: dict[str, Any] | None
    """config.json, when the repo has one (fetched alone: a few kB)."""
    offline: bool = False
    """True when this came from the local cache rather than from the Hub."""


@attrs.frozen
class SearchResult:
    """One model found by `search_models`."""

    repo_id: str
    downloads: int | None
    likes: int | None
    tags: tuple[str, ...]
    pipeline_tag: str | None
    parameters: int | None
    """None when the Hub does not report safetensors metadata for the repo."""
    gated: bool | str | None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# -- settings ---------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """The Hub's URL (`HF_ENDPOINT`, default https://huggingface.co)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """Whether the Hub must not be asked: `HF_HUB_OFFLINE=1` (read now, and as huggingface_hub
    read it at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> Path:
    """The huggingface_hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def find_token(
    token: str | Any | None = None, passwords: str | os.PathLike[str] | None = None
) -> tuple[str | None, str | None]:
    """The Hub token to send and where it came from: `token` (a str or a `ft_config.Secret`),
    else `hf_token` in `passwords` (default: ./passwords.yml), else `$HF_TOKEN`. (None, None)
    when none is set: huggingface_hub then uses the token of `hf auth login`, if any."""
    from ft_config import PASSWORDS_FILE, load_secrets

    if token is not None:
        value = token.reveal() if hasattr(token, "reveal") else str(token)
        return value or None, "the token given"
    path = Path(passwords) if passwords is not None else Path.cwd() / PASSWORDS_FILE
    secrets = load_secrets(path)
    secret = secrets.get("hf_token")
    if secret is None:
        return None, None
    return secret.reveal(), secrets.source("hf_token")


def cache_folder(repo_id: str) -> Path:
    """`models--org--name` in the hub cache."""
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def is_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether a snapshot of `repo_id` (at `revision`, default the default branch) with a
    config.json is in the cache. Asks nothing of the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def wanted_files(files: Sequence[str], *, trust_remote_code: bool = False) -> list[str]:
    """The repo files a download fetches (see ALLOW_PATTERNS and IGNORE_PATTERNS)."""
    allow, ignore = _patterns(trust_remote_code)
    return [
        name
        for name in files
        if any(fnmatch.fnmatch(name, p) for p in allow)
        and not any(fnmatch.fnmatch(name, p) for p in ignore)
    ]


def _patterns(trust_remote_code: bool) -> tuple[list[str], list[str]]:
    allow = list(ALLOW_PATTERNS) + (list(CODE_PATTERNS) if trust_remote_code else [])
    return allow, list(IGNORE_PATTERNS)


# -- checks -----------------------------------------------------------------------------------


def check_weights(files: Sequence[str], where: str) -> None:
    """Refuse a file list with pickle weights only, or no weights at all."""
    safetensors = [f for f in files if f.endswith(".safetensors") and not _ignored(f)]
    if safetensors:
        return
    pickles = [f for f in files if any(fnmatch.fnmatch(f, p) for p in PICKLE_PATTERNS)]
    if pickles:
        shown = ", ".join(sorted(pickles)[:3]) + (", ..." if len(pickles) > 3 else "")
        raise UnsafeWeightsError(
            f"{where} has only pickle weights ({shown}) and no safetensors. ft loads safetensors "
            "only, because loading a pickle can run arbitrary code. Use a version of the model "
            "in safetensors (on the Hub, a repo's `refs/pr/N` branch often holds a conversion: "
            "name@refs/pr/N), or convert the weights yourself where you trust them."
        )
    ggufs = [f for f in files if f.endswith(".gguf")]
    if ggufs:
        raise ModelError(
            f"{where} holds GGUF files ({', '.join(sorted(ggufs)[:3])}), not a safetensors model: "
            "download one .gguf file and give its path, and ft imports it"
        )
    raise ModelError(f"{where} has no model weights (no *.safetensors file)")


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in IGNORE_PATTERNS)


def check_remote_code(config: dict[str, Any], where: str, *, trust_remote_code: bool) -> None:
    """Refuse a config that needs the model's own Python code, unless the caller trusts it.

    `auto_map` alone is not enough: Phi-3 and others ship one for older transformers, and with
    trust_remote_code off transformers uses its own class for a `model_type` it knows."""
    if trust_remote_code or "auto_map" not in config:
        return
    model_type = str(config.get("model_type") or "")
    if model_type in FAMILIES:
        return
    classes = ", ".join(sorted({str(v) for v in _flat(config["auto_map"])})[:3])
    raise RemoteCodeError(
        f"{where} needs its own Python code to load (config.json `auto_map`: {classes}; "
        f"model_type {model_type or '(none)'!r} is not an architecture ft loads with transformers' "
        "own code). That code would "
        "run on this machine with your permissions, so ft does not run it unless you opt in for "
        f"this model: set `{REMOTE_CODE_SETTING}` in train.yml (or pass "
        "trust_remote_code=True), after reading the code in the repo."
    )


def _flat(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _flat(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flat(item)
    else:
        yield str(value)


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a model folder, as a dict."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{folder} has no config.json: it is not a Hugging Face model folder"
        ) from None
    except ValueError as error:
        raise ModelError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return config


# -- download ---------------------------------------------------------------------------------


def download_model(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | Any | None = None,
    offline: bool | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Download:
    """Put `repo_id` (at `revision`) into the huggingface_hub cache and return where it is.

    Online: the repo's file list is checked first (pickle-only repos are refused before any
    download), then config.json (custom code), then the safetensors weights, configs and
    tokenizer files are fetched, resuming partial files. Files already cached are not fetched
    again. Offline (`offline=True`, or None and `HF_HUB_OFFLINE=1`), or when the Hub cannot be
    reached, the cached snapshot is used; `NotCachedError` if there is none.
    """
    offline = is_offline() if offline is None else offline
    if offline:
        return _from_cache(repo_id, revision, trust_remote_code, reason="offline")
    token_value, token_source = find_token(token)
    try:
        info = _model_info(repo_id, revision, token_value, token_source, files_metadata=True)
    except HubUnreachableError as unreachable:
        return _from_cache(repo_id, revision, trust_remote_code, reason=str(unreachable))
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    check_weights(list(sizes), f"The Hub repo {where}")
    if "config.json" not in sizes:
        raise ModelError(
            f"The Hub repo {where} has no config.json: it is not a transformers model ft can load"
        )
    wanted = wanted_files(list(sizes), trust_remote_code=trust_remote_code)
    snapshot = cache_folder(repo_id) / "snapshots" / str(info.sha)
    missing = tuple(name for name in wanted if not (snapshot / name).is_file())
    # config.json alone first (a few kB): custom code is refused before the weights come.
    config = _fetch_config(repo_id, info.sha, token_value, token_source)
    check_remote_code(config, f"The Hub repo {where}", trust_remote_code=trust_remote_code)
    from huggingface_hub import snapshot_download

    allow, ignore = _patterns(trust_remote_code)
    # No bars when everything is cached: "Fetching 6 files 100%" would read as a download.
    try:
        with (
            _progress_bars(progress and bool(missing)),
            _hub_errors(repo_id, revision, token_source),
        ):
            path = snapshot_download(
                repo_id,
                revision=revision,
                token=token_value,
                allow_patterns=allow,
                ignore_patterns=ignore,
            )
    except HubUnreachableError as error:
        raise HubUnreachableError(
            f"{repo_id}: the download stopped, {error}; run the command again to resume it"
        ) from None
    path = Path(path)
    return Download(
        repo_id=repo_id,
        revision=revision,
        commit=path.name,
        path=path,
        files={name: _size(sizes.get(name), path / name) for name in wanted},
        downloaded=missing,
        offline=False,
    )


def _size(reported: int | None, path: Path) -> int:
    if reported is not None:
        return int(reported)
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _from_cache(
    repo_id: str, revision: str | None, trust_remote_code: bool, reason: str
) -> Download:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    allow, ignore = _patterns(trust_remote_code)
    name = repo_id + (f"@{revision}" if revision else "")
    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=True,
                allow_patterns=allow,
                ignore_patterns=ignore,
            )
        )
    except LocalEntryNotFoundError:
        raise NotCachedError(
            f"{name} is not in the cache and {reason}: run `ft models pull {name}` with network "
            f"(cache: {hub_cache_dir()})"
        ) from None
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    check_weights(files, f"The cached snapshot {path}")
    config = read_config(path)
    check_remote_code(config, f"The Hub repo {name}", trust_remote_code=trust_remote_code)
    return Download(
        repo_id=repo_id,
        revision=revision,
        commit=path.name,
        path=path,
        files={f: (path / f).stat().st_size for f in wanted_files(files, trust_remote_code=True)},
        downloaded=(),
        offline=True,
    )


def _fetch_config(
    repo_id: str, commit: str | None, token: str | None, source: str | None
) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    with _hub_errors(repo_id, commit, source):
        path = hf_hub_download(repo_id, "config.json", revision=commit, token=token)
    return read_config(Path(path).parent)


# -- info and search --------------------------------------------------------------------------


def hub_model_info(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | Any | None = None,
    offline: bool | None = None,
) -> HubModel:
    """What the Hub knows about `repo_id`: files and sizes, licence, gating, parameters, and
    config.json (fetched alone, a few kB; no weights). Offline, from the cache."""
    offline = is_offline() if offline is None else offline
    if not offline:
        token_value, token_source = find_token(token)
        try:
            info = _model_info(repo_id, revision, token_value, token_source, files_metadata=True)
        except HubUnreachableError:
            pass
        else:
            files = {s.rfilename: s.size for s in info.siblings or []}
            config = None
            if "config.json" in files:
                try:
                    config = _fetch_config(repo_id, info.sha, token_value, token_source)
                except ModelError:
                    config = None  # gated: the metadata is public, the files are not
            card = info.card_data
            licence = getattr(card, "license", None) if card is not None else None
            licence = licence or next(
                (t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), None
            )
            return HubModel(
                repo_id=repo_id,
                commit=info.sha,
                files=files,
                private=bool(info.private),
                gated=info.gated if info.gated is not None else False,
                licence=licence,
                downloads=info.downloads,
                likes=info.likes,
                tags=tuple(info.tags or ()),
                pipeline_tag=info.pipeline_tag,
                parameters=_safetensors_total(info),
                config=config,
            )
    download = _from_cache(repo_id, revision, trust_remote_code=True, reason="offline")
    return HubModel(
        repo_id=repo_id,
        commit=download.commit,
        files=dict(download.files),
        private=False,
        gated=False,
        licence=None,
        downloads=None,
        likes=None,
        tags=(),
        pipeline_tag=None,
        parameters=None,
        config=read_config(download.path),
        offline=True,
    )


def search_models(
    query: str,
    *,
    limit: int = 20,
    task: str | None = "text-generation",
    max_parameters: int | None = None,
    token: str | Any | None = None,
) -> list[SearchResult]:
    """Models on the Hub whose id matches `query`, most downloaded first. `task` filters by
    pipeline tag (None: any). With `max_parameters`, models whose size the Hub does not report
    are left out, since they cannot be shown to fit."""
    from huggingface_hub import HfApi

    if is_offline():
        raise ModelError("searching the Hub needs the network, and HF_HUB_OFFLINE is set")
    token_value, token_source = find_token(token)
    # Over-fetch when filtering by size here, so that `limit` results can remain.
    fetch = limit if max_parameters is None else min(max(limit * 4, 50), 500)
    expand = ["downloads", "likes", "tags", "pipeline_tag", "safetensors", "gated"]
    with _hub_errors(query, None, token_source, search=True):
        found = list(
            HfApi().list_models(
                search=query,
                pipeline_tag=task,
                sort="downloads",
                limit=fetch,
                expand=expand,  # type: ignore[arg-type]
                token=token_value,
            )
        )
    results = [
        SearchResult(
            repo_id=model.id,
            downloads=model.downloads,
            likes=model.likes,
            tags=tuple(model.tags or ()),
            pipeline_tag=model.pipeline_tag,
            parameters=_safetensors_total(model),
            gated=model.gated,
        )
        for model in found
    ]
    if max_parameters is not None:
        results = [
            r for r in results if r.parameters is not None and r.parameters <= max_parameters
        ]
    return results[:limit]


def _safetensors_total(info: Any) -> int | None:
    safetensors = getattr(info, "safetensors", None)
    total = getattr(safetensors, "total", None)
    return int(total) if total else None


# -- errors -----------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "no connection" for the HTTP library huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests.exceptions", ("ConnectionError", "Timeout")),
    ):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        errors += [getattr(imported, name) for name in names if hasattr(imported, name)]
    return tuple(errors)


def _model_info(
    repo_id: str,
    revision: str | None,
    token: str | None,
    source: str | None,
    *,
    files_metadata: bool,
) -> Any:
    from huggingface_hub import HfApi

    with _hub_errors(repo_id, revision, source):
        return HfApi().model_info(
            repo_id, revision=revision, files_metadata=files_metadata, token=token
        )


@contextmanager
def _hub_errors(
    repo_id: str, revision: str | None, token_source: str | None, *, search: bool = False
) -> Iterator[None]:
    """Turn huggingface_hub's errors into messages that say what to do. Never names a token's
    value, only where it came from."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    token_hint = (
        "put a Hugging Face token that has access in `hf_token` in passwords.yml "
        "(`ft secrets set hf_token`) or in the HF_TOKEN environment variable"
    )
    try:
        yield
    except GatedRepoError:
        got = (
            f"the token from {token_source} has not been granted access"
            if token_source
            else "no token was sent"
        )
        raise HubAccessError(
            f"{repo_id} is gated ({got}): accept its terms at {endpoint}/{repo_id} while logged "
            f"in, then {token_hint}"
        ) from None
    except RepositoryNotFoundError:
        if token_source:
            detail = f"or the token from {token_source} does not give access to it"
        else:
            detail = f"or it is private or gated and needs a token: {token_hint}"
        raise HubAccessError(
            f"{repo_id}: no such model on the Hub ({endpoint}), {detail}. Check the name with "
            f"`ft models search {repo_id.split('/')[-1]}`."
        ) from None
    except RevisionNotFoundError:
        raise ModelError(
            f"{repo_id} has no revision {revision!r}: give a branch, a tag or a commit that exists "
            f"(see {endpoint}/{repo_id}/tree/main)"
        ) from None
    except LocalEntryNotFoundError as error:
        raise NotCachedError(
            f"{repo_id} could not be fetched and is not (completely) in the cache: {error}. Run "
            f"`ft models pull {repo_id}` with network."
        ) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            who = f"the token from {token_source}" if token_source else "the request"
            raise HubAccessError(
                f"The Hub ({endpoint}) refused {who} (401: invalid credentials): check "
                "`hf_token` in passwords.yml and HF_TOKEN"
            ) from None
        what = f"searching for {repo_id!r}" if search else repo_id
        raise ModelError(f"The Hub ({endpoint}) answered {status} for {what}: {error}") from None
    except _network_errors() as error:
        raise HubUnreachableError(
            f"the Hub ({endpoint}) cannot be reached ({type(error).__name__})"
        ) from None


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars, on or off for one call, whatever they were before
    (transformers' `disable_progress_bar`, which commands call to hide its loading bars, turns
    the Hub's off too). `HF_HUB_DISABLE_PROGRESS_BARS=1` keeps them off."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    if enabled == (not was_disabled) or (enabled and constants.HF_HUB_DISABLE_PROGRESS_BARS):
        yield
        return
    if enabled:
        enable_progress_bars()
    else:
        disable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            disable_progress_bars()
        else:
            enable_progress_bars()
