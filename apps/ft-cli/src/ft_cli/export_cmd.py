"""`ft export`: a run or a model to PEFT, Hugging Face, MLX, GGUF or Ollama, each export checked.

The command only finds what to export (a run's checkpoint and base model, or a model name and
`--adapter`s) and shows progress and the check; ft-export does the work. torch, transformers,
peft and mlx are imported inside the command, so `ft --help` stays light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ft_cli.main import UserError, quiet_libraries
from ft_export.quant_costs import quant_help

FORMATS = ("peft", "hf", "gguf", "gguf-lora", "mlx", "mlx-adapter", "ollama")


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--format", "-f", "fmt", required=True, help=f"What to write: {', '.join(FORMATS)}.")
@click.option(
    "--checkpoint", default=None, help="For a run: best, last or a step number (default: final)."
)
@click.option(
    "--quant",
    "-q",
    default=None,
    help="gguf (default f16; size and relative logits error on SmolLM2-135M): "
    + quant_help()
    + ". mlx: 4 or 8 bits.",
)
@click.option(
    "--dtype",
    default=None,
    type=click.Choice(["float32", "float16", "bfloat16"]),
    help="Weights of hf/mlx exports (default: the dtype the base model is saved in).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="The folder to write; for gguf and gguf-lora a path ending in .gguf is the file.",
)
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A PEFT adapter folder to apply to MODEL (repeat to combine several).",
)
@click.option(
    "--base", default=None, help="The base model of adapter folders (default: from the adapter)."
)
@click.option(
    "--merge-adapters",
    is_flag=True,
    help="SOURCES are adapters (runs or folders) to combine into one.",
)
@click.option("--weights", default=None, help="One weight per adapter when combining: 0.5,0.5.")
@click.option(
    "--combination",
    default="linear",
    show_default=True,
    type=click.Choice(
        ["linear", "ties", "dare_ties", "dare_linear", "cat", "svd", "magnitude_prune"]
    ),
    help="How adapters are combined (peft's add_weighted_adapter).",
)
@click.option("--density", default=0.5, show_default=True, help="TIES/DARE: fraction kept.")
@click.option(
    "--template", default=None, help="Chat template to ship (name or .jinja; default: training's)."
)
@click.option("--name", default=None, help="The model's name in the export's metadata.")
@click.option("--no-verify", is_flag=True, help="Skip reloading and checking the export.")
@click.option(
    "--check",
    "check",
    default="quick",
    show_default=True,
    type=click.Choice(["quick", "full"]),
    help="gguf/ollama: quick reads every tensor back and runs one forward pass; full reloads "
    "the file with transformers' GGUF loader and compares greedy tokens too.",
)
@click.option("--push-to-hub", "push_repo", default=None, help="Upload the export to this repo.")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo private.")
def export(
    sources: tuple[str, ...],
    fmt: str,
    checkpoint: str | None,
    quant: str | None,
    dtype: str | None,
    output: Path | None,
    adapters: tuple[Path, ...],
    base: str | None,
    merge_adapters: bool,
    weights: str | None,
    combination: str,
    density: float,
    template: str | None,
    name: str | None,
    no_verify: bool,
    check: str,
    push_repo: str | None,
    private: bool,
) -> None:
    """Export RUN or MODEL (or, with --merge-adapters, several adapters) to --format, then
    reload the export with an independent reader and compare it with ft's merged model.

    \b
    ft export last --format gguf --quant q8_0
    ft export smollm2-135m --format gguf --quant q4_k_m -o smollm2.gguf
    ft export 20261125-2030 --checkpoint best --format hf --dtype bfloat16
    ft export smollm2-135m --adapter runs/x/adapter --format ollama
    ft export --merge-adapters runA runB --weights 0.7,0.3 --combination ties --format peft
    """
    from ft_export import ExportError, ExportOptions, ExportSource, VerificationError
    from ft_export.registry import get_exporter

    try:
        exporter = get_exporter(fmt)
    except ExportError as error:
        raise UserError(str(error)) from None
    if len(sources) > 1 and not merge_adapters:
        raise UserError(
            f"{len(sources)} sources given: pass one RUN or MODEL, or --merge-adapters to "
            "combine several adapters"
        )
    found = [_find_source(ref, checkpoint, base) for ref in sources]
    if merge_adapters:
        if any(not f.adapters for f in found):
            plain = [ref for ref, f in zip(sources, found, strict=True) if not f.adapters]
            raise UserError(f"--merge-adapters combines adapters; {', '.join(plain)} has none")
        all_adapters = tuple(a for f in found for a in f.adapters)
    else:
        all_adapters = found[0].adapters + adapters
    first = found[0]
    bases = {f.base.resolve() for f in found}
    if len(bases) > 1:
        raise UserError(
            "the adapters were trained on different base models "
            f"({', '.join(str(b) for b in sorted(bases))}); they cannot be combined"
        )
    weight_list = _weights(weights, len(all_adapters))
    chat_template = _template_source(template) if template else first.chat_template
    source = ExportSource(
        base=first.base,
        adapters=all_adapters,
        adapter_weights=weight_list,
        combination=combination,
        density=density,
        chat_template=chat_template,
        name=name or first.name,
        quantized_base=first.quantized_base,
    )
    from ft_export.merge import saved_dtype

    label = quant or ("f16" if fmt in ("gguf", "gguf-lora") else dtype or saved_dtype(source.base))
    label = "q8_0" if fmt == "ollama" and not quant else label
    out = output or (first.exports / f"{fmt}-{label}")
    options = ExportOptions(dtype=dtype, quant=quant, verify=not no_verify, check=check)

    click.echo(f"exporting {source.display_name} as {fmt} ({label}) to {out}", err=True)
    if options.verify or source.adapters or fmt != "gguf":
        quiet_libraries()  # only when transformers will be loaded anyway: it takes seconds
    try:
        with _Bar() as bar:
            result = exporter.export(source, out, options, bar)
    except VerificationError as error:
        _report(error.result)
        raise UserError(
            f"the export failed its check (files kept in {error.result.path} for inspection); "
            "rerun with --no-verify to skip the check"
        ) from None
    except (ExportError, OSError) as error:
        raise UserError(str(error)) from None
    _report(result)
    if push_repo:
        from ft_config.secrets import PASSWORDS_FILE, load_secrets
        from ft_export.hub import push_to_hub

        token = load_secrets(Path(PASSWORDS_FILE)).get("hf_token")
        try:
            url = push_to_hub(result.path, push_repo, token, private=private)
        except ExportError as error:
            raise UserError(str(error)) from None
        click.echo(f"pushed to {push_repo}: {url}")


@dataclass(frozen=True)
class _Found:
    """One source on the command line: the base model folder and the adapters on it."""

    base: Path
    adapters: tuple[Path, ...]
    exports: Path
    """Where its exports go by default."""
    name: str
    chat_template: str | None = None
    quantized_base: bool = False


def _find_source(ref: str, checkpoint: str | None, base: str | None) -> _Found:
    """What `ref` names: an adapter folder, a run, or a model (in that order)."""
    path = Path(ref).expanduser()
    if (path / "adapter_config.json").is_file():
        if checkpoint:
            raise UserError("--checkpoint applies to a run, and this is an adapter folder")
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base_name = base or config.get("base_model_name_or_path")
        if not base_name:
            raise UserError(f"{path}: the adapter does not name its base model; pass --base MODEL")
        return _Found(_resolve(base_name), (path,), Path("exports"), path.name)
    if (path / "config.json").is_file() and not (path / "run.json").is_file():
        if checkpoint:
            raise UserError("--checkpoint applies to a run, and this is a model folder")
        return _Found(_resolve(ref), (), Path("exports"), path.name)
    from ft_runs.run_folder import RunNotFoundError, find_run

    try:
        run = find_run(ref)
    except RunNotFoundError as error:
        if path.exists() or ref in ("last", "latest"):
            raise UserError(str(error)) from None
        resolved = _resolve(base or ref)
        return _Found(resolved, (), Path("exports"), Path(ref.split("@")[0]).name)
    return _from_run(run, checkpoint, base)


def _from_run(run: Any, checkpoint: str | None, base: str | None) -> _Found:
    from ft_runs.exports import RunExportError, run_source
    from ft_runs.run_lock import reading

    # Until the command ends: a trainer still running on this run does not prune the
    # checkpoint being exported.
    click.get_current_context().with_resource(reading(run.path))
    try:
        found = run_source(run, checkpoint, base, warn=lambda text: click.echo(text, err=True))
    except RunExportError as error:
        raise UserError(str(error)) from None
    return _Found(
        found.base,
        found.adapters,
        found.exports,
        found.name,
        found.chat_template,
        quantized_base=found.quantized_base,
    )


def _template_source(template: str) -> str:
    from ft_data.errors import DataError
    from ft_data.templates import get_template

    try:
        return get_template(template).source
    except DataError as error:
        raise UserError(str(error)) from None


def _resolve(name: str) -> Path:
    from ft_runs.exports import RunExportError, resolve_model_path

    try:
        return resolve_model_path(name)
    except RunExportError as error:
        raise UserError(str(error)) from None


def _weights(text: str | None, count: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(
            f"--weights {text!r}: give numbers separated by commas, like 0.5,0.5"
        ) from None
    if len(values) != count:
        raise UserError(f"--weights has {len(values)} numbers for {count} adapters")
    return values


def _report(result: Any) -> None:
    click.echo(f"wrote {result.format} export: {result.path}")
    for file in result.files:
        size = file.stat().st_size
        shown = file.name if file == result.path else file.relative_to(result.path)
        click.echo(f"  {shown}  {_size(size)}")
    for note in result.notes:
        click.echo(f"  note: {note}")
    verification = result.verification
    if verification is None:
        click.echo("check: skipped (--no-verify)")
    else:
        click.echo(f"check: {verification.summary()}")
        for note in verification.notes:
            click.echo(f"  note: {note}")
    check_s = verification.seconds if verification is not None else None
    if result.seconds is not None and check_s is not None:
        click.echo(f"time: export {result.seconds:.1f} s, check {check_s:.1f} s")
    elif result.seconds is not None:
        click.echo(f"time: export {result.seconds:.1f} s")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class _Bar:
    """A rich progress bar driven by ft-export's `progress(step, done, total)` calls."""

    def __enter__(self) -> _Bar:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=28),
            TaskProgressColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=None)
        return self

    def __call__(self, step: str, done: int, total: int) -> None:
        self.progress.update(self.task, description=step, completed=done, total=total or None)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)
