"""Datasets on the Hugging Face Hub: ``org/name`` or ``hf://datasets/org/name[@revision]``,
with an optional config (subset) and split.

The repo's files are fetched with huggingface_hub into its standard cache (resumable, shared
with other tools; the token is passwords.yml's ``hf_token``, else ``$HF_TOKEN``), and read
with ft's own readers: Parquet, JSON, JSON Lines, CSV, TSV, text. Once cached, the same
dataset prepares offline (``HF_HUB_OFFLINE=1``, or no network).

Which files: the README's ``configs:`` metadata when it has one (each config's
``data_files``, by split), else the Hub's conventions: files under a folder named after the
config, and of those the ones whose path names the split (``train.jsonl``,
``data/train-00000-of-00001.parquet``, ``train/part-0.json``); when no file names a split,
every data file is ``train``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ft_data.errors import DataError
from ft_data.readers import READER_BY_SUFFIX

HUB_PREFIX = "hf://datasets/"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SPLITS = ("train", "validation", "valid", "val", "dev", "test", "eval")


def looks_like_hub_id(value: str, folder: str | Path | None = None) -> bool:
    """Whether ``value`` names a Hub dataset: ``hf://datasets/...``, or ``org/name`` that is
    no file or folder (relative to ``folder``) and has no data file extension."""
    if value.startswith(HUB_PREFIX):
        return True
    if "://" in value or not _REPO_ID.match(value.split("@", 1)[0]):
        return False
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(folder or Path.cwd()) / path
    return not path.exists() and Path(value).suffix.lower() not in READER_BY_SUFFIX


@dataclass(frozen=True)
class HubDataset:
    """A dataset repo on the Hub, and which of its data to read."""

    repo_id: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        config: str | None = None,
        split: str | None = None,
        revision: str | None = None,
    ) -> HubDataset:
        """``org/name``, ``org/name@revision`` or ``hf://datasets/org/name[@revision]``."""
        name = text.removeprefix(HUB_PREFIX).strip("/")
        name, _, at = name.partition("@")
        if not _REPO_ID.match(name):
            raise DataError(
                f"{text!r} is not a Hugging Face dataset id",
                hint="write org/name, or hf://datasets/org/name",
            )
        return cls(name, config, split, revision or at or None)

    def __str__(self) -> str:
        text = f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        extra = [f"{k} {v}" for k, v in (("config", self.config), ("split", self.split)) if v]
        return text + (f" ({', '.join(extra)})" if extra else "")


def hub_token() -> str | None:
    """passwords.yml's ``hf_token`` (in the working folder), else None: huggingface_hub then
    uses ``$HF_TOKEN`` or the token of ``hf auth login``."""
    from ft_config import PASSWORDS_FILE, load_secrets

    path = Path.cwd() / PASSWORDS_FILE
    if not path.is_file():
        return None
    secret = load_secrets(path).get("hf_token")
    return secret.reveal() if secret is not None else None


def hub_files(dataset: HubDataset, token: str | None = None) -> list[Path]:
    """The local paths (in the huggingface_hub cache) of the files of ``dataset``'s config and
    split, downloaded when not cached. Raises :class:`DataError` naming the dataset when it
    cannot be reached or holds no such split."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    token = token or hub_token()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = str(dataset)
    try:
        if offline:
            raise LocalEntryNotFoundError("offline")
        names = HfApi().list_repo_files(
            dataset.repo_id, repo_type="dataset", revision=dataset.revision, token=token
        )
        readme = None
        if "README.md" in names:
            folder = snapshot_download(
                dataset.repo_id,
                repo_type="dataset",
                revision=dataset.revision,
                token=token,
                allow_patterns=["README.md"],
            )
            readme = Path(folder) / "README.md"
        chosen = select_files(names, readme, dataset)
        folder = snapshot_download(
            dataset.repo_id,
            repo_type="dataset",
            revision=dataset.revision,
            token=token,
            allow_patterns=chosen,
        )
    except (GatedRepoError, RepositoryNotFoundError) as error:
        raise DataError(
            f"the Hub has no dataset {dataset.repo_id!r} this token can read "
            f"({type(error).__name__})",
            file=where,
            hint="check the name (nothing of that name is on disk here either); for a gated "
            "or private dataset put a token with access in hf_token in passwords.yml "
            "(`ft secrets set hf_token`) or $HF_TOKEN",
        ) from None
    except RevisionNotFoundError:
        raise DataError(f"the dataset has no revision {dataset.revision!r}", file=where) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        # Offline, or the Hub cannot be reached: the cached snapshot, if there is one.
        try:
            folder = snapshot_download(
                dataset.repo_id,
                repo_type="dataset",
                revision=dataset.revision,
                token=token,
                local_files_only=True,
            )
        except (LocalEntryNotFoundError, OSError):
            raise DataError(
                f"cannot reach the Hugging Face Hub and the dataset is not cached ({error})",
                file=where,
                hint="connect once to download it; after that it prepares offline. If you "
                "meant a local file or folder: nothing of that name is on disk here",
            ) from None
        root = Path(folder)
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        readme = root / "README.md" if (root / "README.md").is_file() else None
        chosen = select_files(names, readme, dataset)
    root = Path(folder)
    files = sorted(root / name for name in chosen)
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise DataError(
            f"the cached dataset lacks {', '.join(missing[:3])}",
            file=where,
            hint="connect once so the files are downloaded",
        )
    return files


def select_files(names: list[str], readme: Path | None, dataset: HubDataset) -> list[str]:
    """The data files of ``dataset``'s config and split among the repo's ``names`` (see the
    module docstring). Raises :class:`DataError` listing what there is when nothing fits."""
    split = dataset.split or "train"
    data = [n for n in names if Path(n).suffix.lower() in READER_BY_SUFFIX and _is_data(n)]
    configs = _readme_configs(readme)
    if configs:
        by_name = {str(c.get("config_name", "default")): c for c in configs}
        name = (
            dataset.config
            or next((n for n, c in by_name.items() if c.get("default")), None)
            or ("default" if "default" in by_name else next(iter(by_name)))
        )
        if name not in by_name:
            raise DataError(
                f"the dataset has no config {name!r}; configs: {', '.join(by_name)}",
                file=str(dataset),
                hint="set config to one of them",
            )
        patterns = _split_patterns(by_name[name].get("data_files"), split)
        if patterns is None:
            splits = ", ".join(_split_names(by_name[name].get("data_files")))
            raise DataError(
                f"config {name!r} has no split {split!r}; splits: {splits}",
                file=str(dataset),
                hint="set split to one of them",
            )
        chosen = [n for n in data if any(_matches(n, p) for p in patterns)]
    else:
        if dataset.config:
            data = [n for n in data if n.split("/", 1)[0] == dataset.config]
        named = {n: _split_of(n) for n in data}
        if any(named.values()):
            chosen = [n for n, s in named.items() if s == _canonical(split)]
        else:
            chosen = data if _canonical(split) == "train" else []
    if not chosen:
        raise DataError(
            f"found no data files for config {dataset.config or 'default'!r}, split {split!r}; "
            f"files: {', '.join(data[:10]) or 'none'}",
            file=str(dataset),
            hint="set config and split (data.train as [{path: org/name, config: ..., split: ...}])",
        )
    return sorted(chosen)


def _is_data(name: str) -> bool:
    parts = name.split("/")
    return not any(p.startswith(".") for p in parts) and parts[-1] != "README.md"


def _readme_configs(readme: Path | None) -> list[dict[str, object]]:
    if readme is None or not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return []
    front = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else []


def _split_patterns(data_files: object, split: str) -> list[str] | None:
    """The path patterns of ``split`` in a config's ``data_files``; None when it has none."""
    if isinstance(data_files, str | list) and not (
        isinstance(data_files, list) and any(isinstance(d, dict) for d in data_files)
    ):
        items = [data_files] if isinstance(data_files, str) else data_files
        return [str(p) for p in items] if split == "train" else None
    if isinstance(data_files, dict):
        data_files = [{"split": k, "path": v} for k, v in data_files.items()]
    for entry in data_files if isinstance(data_files, list) else []:
        if isinstance(entry, dict) and entry.get("split") == split:
            path = entry.get("path")
            return [str(p) for p in (path if isinstance(path, list) else [path])]
    return None


def _split_names(data_files: object) -> list[str]:
    if isinstance(data_files, dict):
        return list(map(str, data_files))
    if isinstance(data_files, list) and any(isinstance(d, dict) for d in data_files):
        return [str(d.get("split")) for d in data_files if isinstance(d, dict)]
    return ["train"]


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, pattern.replace("**/", ""))


def _canonical(split: str) -> str:
    return {"valid": "validation", "val": "validation", "dev": "validation"}.get(split, split)


def _split_of(name: str) -> str | None:
    """The split a file's path names (a folder, or the start of the file name), if any."""
    parts = name.lower().split("/")
    for part in [*parts[:-1], parts[-1]]:
        stem = part.split(".", 1)[0]
        for split in _SPLITS:
            if stem == split or re.match(rf"{split}[-_.]", stem + "."):
                return _canonical(split)
    return None
