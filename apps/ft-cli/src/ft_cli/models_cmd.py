"""`ft models`: the catalog, the local cache, Hub search, downloads and what a model needs.

The work is done by ft_models (fits, cached, describe, hub, resolve); this module parses
options, calls it and prints (with ft_cli.models_show). Nothing here imports torch,
transformers or mlx.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ft_cli.models_show import (
    METHOD_LABELS,
    format_bytes,
    print_cached,
    print_catalog,
    print_info,
    table_lines,
)
from ft_models.fits import FIT_FRACTION

METHOD_CHOICES = tuple(METHOD_LABELS)


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
    from ft_models.cached import cached_models
    from ft_models.fits import catalog_memory, memory_budget

    budget = None
    if fits or memory_text:
        size = parse_size(memory_text) if memory_text else None
        budget = memory_budget(size, "--memory")
    rows = catalog_memory(
        max_parameters=_parameters_option(max_params),
        budget=budget,
        method=method,
        batch_size=batch_size,
        seq_len=seq_len,
    )
    cached = cached_models()

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
                "budget": budget.as_dict() if budget else None,
                "cached": cached,
            }
        )
        return

    print_catalog(rows, budget.as_dict() if budget else None, method, batch_size, seq_len)
    print_cached(cached)


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
    for line in table_lines(table, right={1, 2, 3}):
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
    from ft_models.describe import describe_model

    report = describe_model(name, revision=revision, batch_size=batch_size, seq_len=seq_len)
    if as_json:
        _echo_json(report)
    else:
        print_info(report)
