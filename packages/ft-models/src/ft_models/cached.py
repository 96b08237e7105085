"""The models already on this machine: what `ft models list` shows under "Downloaded" and
"Imported", as plain data. Reading it never touches the network.
"""

from __future__ import annotations

import json
from typing import Any

from ft_config import app_paths
from ft_models.catalog import entry_for_repo
from ft_models.hub import hub_cache_dir


def cached_models() -> dict[str, Any]:
    """The Hub models in the huggingface_hub cache and the GGUF files ft imported.

    Keys: hub_cache (the folder), hub (per model repo, by name: repo_id, alias (the catalog's,
    or None), size, revisions: commit, refs, path, files), gguf_folder, gguf (per import:
    name, path, source (the .gguf file), dtype, size). A cache that cannot be read lists no
    Hub models rather than failing.
    """
    hub: list[dict[str, Any]] = []
    cache = hub_cache_dir()
    if cache.is_dir():
        from huggingface_hub import scan_cache_dir

        try:
            info = scan_cache_dir(cache)
        except Exception:  # a damaged cache must not break the listing
            info = None
        for repo in sorted(info.repos if info else [], key=lambda r: r.repo_id.lower()):
            if repo.repo_type != "model":
                continue
            entry = entry_for_repo(repo.repo_id)
            hub.append(
                {
                    "repo_id": repo.repo_id,
                    "alias": entry.alias if entry else None,
                    "size": repo.size_on_disk,
                    "revisions": [
                        {
                            "commit": rev.commit_hash,
                            "refs": sorted(rev.refs),
                            "path": str(rev.snapshot_path),
                            "files": rev.nb_files,
                        }
                        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash)
                    ],
                }
            )
    gguf_root = app_paths().models / "gguf"
    imported = []
    for folder in sorted(gguf_root.iterdir()) if gguf_root.is_dir() else []:
        record_path = folder / "ft-import.json"
        if folder.name.startswith(".") or not record_path.is_file():
            continue
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        imported.append(
            {
                "name": folder.name,
                "path": str(folder),
                "source": record.get("source", {}).get("path"),
                "dtype": record.get("dtype"),
                "size": sum((record.get("files") or {}).values()),
            }
        )
    return {
        "hub_cache": str(cache),
        "hub": hub,
        "gguf_folder": str(gguf_root),
        "gguf": imported,
    }
