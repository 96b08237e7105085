"""How `ft models` shows its answers in a terminal: sizes, tables, the catalog with its memory
per method, the models on disk, and a model's description.

Each function prints the plain data the command got from ft-models (ft_models.fits,
ft_models.cached, ft_models.describe); none computes anything a `--json` reader would miss.
"""

from __future__ import annotations

from typing import Any

import click

METHOD_LABELS = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}


def format_bytes(size: int | None) -> str:
    """1.2 MB, 269 MB, 4.8 GB (powers of 1000, as disks and downloads are quoted)."""
    if size is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{size} B"


def table_lines(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """``rows`` as aligned, indented lines; the columns numbered in ``right`` right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def print_catalog(
    rows: list[dict[str, Any]],
    budget: dict[str, Any] | None,
    method: str,
    batch_size: int,
    seq_len: int,
) -> None:
    """`ft models list`'s catalog: a row per model, with the memory of each method."""
    from ft_models.catalog import format_parameters
    from ft_models.fits import FIT_FRACTION

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
        for line in table_lines(table, right={1, 3, 5, 6, 7}):
            click.echo(line)
        click.echo("  The default is smollm2-135m. More: ft models info ALIAS")
    else:
        click.echo("  no catalog model matches")


def print_cached(cached: dict[str, Any]) -> None:
    """`ft models list`'s models on disk: Hub downloads, then imported GGUF files."""
    click.echo(click.style(f"Downloaded (Hugging Face cache: {cached['hub_cache']})", bold=True))
    if cached["hub"]:
        table = []
        for repo in cached["hub"]:
            commits = ", ".join(
                f"{'/'.join(r['refs']) or 'commit'} {r['commit'][:7]}" for r in repo["revisions"]
            )
            alias = f"({repo['alias']})" if repo["alias"] else ""
            table.append([repo["repo_id"], format_bytes(repo["size"]), commits, alias])
        for line in table_lines(table, right={1}):
            click.echo(line)
    else:
        click.echo("  nothing yet: ft models pull NAME")
    click.echo(click.style(f"Imported GGUF files ({cached['gguf_folder']})", bold=True))
    for item in cached["gguf"]:
        click.echo(f"  {item['name']}  {format_bytes(item['size'])}  from {item['source']}")
    if not cached["gguf"]:
        click.echo("  none")


def print_info(report: dict[str, Any]) -> None:
    """`ft models info`: what `ft_models.describe.describe_model` found."""
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
