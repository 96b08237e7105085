"""What a repo of the local Hub holds, and the JSON the Hub describes it with.

The shapes are those the huggingface_hub client parses (`ModelInfo`, `RepoFile`, `RepoFolder`,
`GitRefs`): ids and hashes are computed as the Hub computes them (git blob ids, LFS sha256), dates
are fixed, and no Xet hash is ever reported.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What the Hub stores with git LFS by default (its .gitattributes), plus anything over 10 MB.
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".npy")
LFS_SUFFIXES += (".npz", ".msgpack", ".model", ".pkl", ".zip", ".gz", ".tar", ".parquet", ".arrow")
LFS_MIN_SIZE = 10 * 1024 * 1024
# Every date the server reports: fixed, so responses are the same from one run to the next.
TIMESTAMP = "2024-01-01T00:00:00.000Z"


def commit_sha(repo_type: str, repo_id: str, revision: str, contents: Mapping[str, bytes]) -> str:
    """A 40-hex commit sha that depends only on the repo, the revision and the content."""
    digest = hashlib.sha1(f"{repo_type}\0{repo_id}\0{revision}".encode())
    for path in sorted(contents):
        digest.update(f"\0{path}\0{hashlib.sha256(contents[path]).hexdigest()}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class HubFile:
    """A file of one commit, with the hashes the Hub reports for it."""

    path: str
    data: bytes
    sha256: str
    git_oid: str  # git blob id: of the content, or of the LFS pointer for an LFS file
    lfs_pointer_size: int | None  # None for a file stored in git itself

    @classmethod
    def of(cls, path: str, data: bytes) -> HubFile:
        """The file `path` holding `data`, stored with LFS if the Hub would store it so."""
        sha256 = hashlib.sha256(data).hexdigest()
        if path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
            return cls(path, data, sha256, _git_blob_oid(pointer.encode()), len(pointer))
        return cls(path, data, sha256, _git_blob_oid(data), None)

    @property
    def etag(self) -> str:
        # The Hub's ETag is the sha256 for an LFS file and the git blob id otherwise.
        return self.sha256 if self.lfs_pointer_size is not None else self.git_oid


@dataclass
class HubRepo:
    """A repo: its metadata, its branches and tags, and the files of each commit."""

    repo_id: str
    repo_type: str
    private: bool
    gated: bool
    token: str | None
    metadata: dict[str, Any]
    default_branch: str
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag name -> commit sha
    tag_names: set[str] = field(default_factory=set)
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)  # sha -> files


def repo_info(repo: HubRepo, sha: str, *, siblings: bool, blobs: bool) -> dict[str, Any]:
    """`model_info`'s (or `dataset_info`'s) JSON for commit `sha`; `blobs` adds sizes and LFS
    hashes to the siblings, as `files_metadata=True` asks."""
    files = sorted(repo.commits[sha].values(), key=lambda file: file.path)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": sha,
        "lastModified": TIMESTAMP,
        "createdAt": TIMESTAMP,
        "private": repo.private,
        "gated": "manual" if repo.gated else False,
        "disabled": False,
        "downloads": repo.metadata["downloads"],
        "likes": repo.metadata["likes"],
        "tags": repo.metadata["tags"],
        "usedStorage": sum(len(file.data) for file in files),
    }
    if repo.repo_type == "model":
        info |= {"modelId": repo.repo_id, "pipeline_tag": repo.metadata["pipeline_tag"]}
        info |= {"library_name": repo.metadata["library_name"]}
        info |= _model_card_fields(repo.commits[sha])
    if siblings:
        info["siblings"] = [_sibling(file) if blobs else {"rfilename": file.path} for file in files]
    return info


def _sibling(file: HubFile) -> dict[str, Any]:
    sibling: dict[str, Any] = {
        "rfilename": file.path,
        "size": len(file.data),
        "blobId": file.git_oid,
    }
    if file.lfs_pointer_size is not None:
        sibling["lfs"] = {
            "sha256": file.sha256,
            "size": len(file.data),
            "pointerSize": file.lfs_pointer_size,
        }
    return sibling


def _model_card_fields(files: dict[str, HubFile]) -> dict[str, Any]:
    """`config` (architectures, model_type) from config.json and `safetensors` (parameter
    counts per dtype) from the safetensors headers, as the Hub computes them."""
    fields: dict[str, Any] = {}
    if "config.json" in files:
        try:
            config = json.loads(files["config.json"].data)
            fields["config"] = {
                key: config[key] for key in ("architectures", "model_type") if key in config
            }
        except ValueError:
            pass
    parameters: dict[str, int] = {}
    for file in files.values():
        if file.path.endswith(".safetensors") and len(file.data) >= 8:
            (size,) = struct.unpack("<Q", file.data[:8])
            try:
                header = json.loads(file.data[8 : 8 + size])
            except ValueError:
                continue
            for name, tensor in header.items():
                if name != "__metadata__":
                    count = 1
                    for dim in tensor["shape"]:
                        count *= dim
                    parameters[tensor["dtype"]] = parameters.get(tensor["dtype"], 0) + count
    if parameters:
        fields["safetensors"] = {"parameters": parameters, "total": sum(parameters.values())}
    return fields


def tree_entries(
    files: dict[str, HubFile], folder: str, recursive: bool
) -> list[dict[str, Any]] | None:
    """`list_repo_tree`'s JSON: the files and folders under `folder` ("" for the root), all the
    way down if `recursive`, or None if there is no such folder."""
    prefix = f"{folder}/" if folder else ""
    below = sorted(path for path in files if path.startswith(prefix))
    if folder and not below:
        return None
    entries: dict[str, dict[str, Any]] = {}
    for path in below:
        parts = path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
            name = prefix + "/".join(parts[:i])
            oid = hashlib.sha1(name.encode()).hexdigest()
            entries.setdefault(name, {"type": "directory", "oid": oid, "size": 0, "path": name})
        if recursive or len(parts) == 1:
            file = files[path]
            entry: dict[str, Any] = {
                "type": "file",
                "oid": file.git_oid,
                "size": len(file.data),
                "path": path,
            }
            if file.lfs_pointer_size is not None:
                entry["lfs"] = {
                    "oid": file.sha256,
                    "size": len(file.data),
                    "pointerSize": file.lfs_pointer_size,
                }
            entries[path] = entry
    return list(entries.values())


def git_refs(repo: HubRepo) -> dict[str, Any]:
    """`list_repo_refs`' JSON: the repo's branches and tags."""

    def ref(name: str, kind: str) -> dict[str, str]:
        return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": repo.refs[name]}

    return {
        "branches": [ref(name, "heads") for name in repo.refs if name not in repo.tag_names],
        "tags": [ref(name, "tags") for name in repo.refs if name in repo.tag_names],
        "converts": [],
        "pullRequests": [],
    }


def read_files(files: Path | Mapping[str, bytes]) -> dict[str, bytes]:
    """Repo path -> bytes, from a mapping or from every file under a folder."""
    if isinstance(files, Mapping):
        return {str(path): bytes(data) for path, data in files.items()}
    root = Path(files)
    if not root.is_dir():
        raise NotADirectoryError(
            f"{root} is not a folder: pass a folder or a mapping of path to bytes"
        )
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
