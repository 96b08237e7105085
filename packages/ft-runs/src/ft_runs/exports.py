"""A run's weights as an export: what `ft export RUN` writes and what `output.export` and
`output.push_to_hub` do when a run ends.

`run_source` says what a run's checkpoint is to an exporter: the base model folder and the
adapter on it (or a full fine-tune's own folder), the chat template it was trained with and
where its exports go. `export_run` hands that to the format's exporter (found through the
`ft.exporters` entry points: ft-export provides the built-in ones) and `push_adapter` uploads a
run's adapter to the Hugging Face Hub. ft-export is imported only when an export is asked for,
so ft-runs works without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from ft_runs.run_folder import RunFolder, RunNotFoundError

Say = Callable[[str], None]


class RunExportError(ValueError):
    """A run cannot be exported as asked; the message says why and what to do."""


@attrs.frozen
class RunSource:
    """A run's weights as an exporter takes them."""

    base: Path
    """The base model folder, or a full fine-tune's own folder."""
    adapters: tuple[Path, ...]
    """The PEFT adapter folder on `base` (none for a full fine-tune)."""
    exports: Path
    """Where the run's exports go by default."""
    name: str
    chat_template: str | None = None
    quantized_base: bool = False


def run_source(
    run: RunFolder,
    checkpoint: str | None = None,
    base: str | None = None,
    *,
    warn: Say = lambda text: None,
) -> RunSource:
    """What to export of `run`: its final adapter, or `checkpoint` (best, last or a step).
    `base` overrides the base model the run recorded. Raises RunExportError."""
    info, settings = run.info(), run.settings()
    if run.task_of(settings) == "sequence-classification":
        raise RunExportError(
            f"run {run.id} trained a sequence classifier (model.task: sequence-classification); "
            "ft export writes language models (PEFT, merged safetensors, MLX, GGUF). Its adapter "
            f"{run.adapter} is already in PEFT's layout: load it with transformers' "
            "AutoModelForSequenceClassification and peft's PeftModel.from_pretrained"
        )
    try:
        folder = run.checkpoint(checkpoint) if checkpoint else run.adapter
    except RunNotFoundError as error:
        raise RunExportError(str(error)) from None
    if not folder.is_dir():
        raise RunExportError(
            f"run {run.id} has no final adapter yet ({folder}); pass --checkpoint last or best"
        )
    method = settings.get("method")
    method_name = method.get("name") if isinstance(method, dict) else method
    chat_template = training_template(info, warn)
    name = f"{run.id}" + (f"-{folder.name}" if checkpoint else "")
    if not (folder / "adapter_config.json").is_file():
        # a full fine-tune: the folder is the whole model
        return RunSource(folder, (), run.exports, name, chat_template)
    model = info.get("model") or {}
    base_path = Path(base) if base else Path(model.get("path") or "")
    if not (base_path / "config.json").is_file():
        if not model.get("name"):
            raise RunExportError(f"run {run.id} does not record its base model; pass --base MODEL")
        base_path = resolve_model_path(model["name"])
    return RunSource(
        base_path,
        (folder,),
        run.exports,
        name,
        chat_template,
        quantized_base=method_name == "qlora",
    )


def training_template(info: dict[str, Any], warn: Say) -> str | None:
    """The chat template the run's data was prepared with (None: the tokenizer's own)."""
    name = (info.get("data") or {}).get("template")
    if not name or name == "tokenizer":
        return None
    config_path = info.get("config_path")
    if name.endswith(".jinja") and config_path and not Path(name).is_absolute():
        name = str(Path(config_path).parent / name)  # relative to the project, as in training
    try:
        from ft_data.templates import get_template

        return get_template(name).source
    except Exception as error:
        warn(
            f"warning: the run's chat template {name!r} is not available ({error}); "
            "the tokenizer's own is exported"
        )
        return None


def resolve_model_path(name: str) -> Path:
    from ft_models.resolve import ModelError, resolve_model

    try:
        return resolve_model(name).path
    except ModelError as error:
        raise RunExportError(str(error)) from None


def export_run(
    run: RunFolder,
    fmt: str,
    *,
    checkpoint: str | None = None,
    quant: str | None = None,
    dtype: str | None = None,
    output: Path | None = None,
    verify: bool = True,
    progress: Any = None,
    say: Say = print,
) -> Any:
    """Export `run` (its final adapter, or `checkpoint`) to format `fmt` with the exporter
    registered for it, checked unless `verify` is False; returns ft-export's ExportResult.
    Raises RunExportError (ft-export missing, an unknown format) or ft-export's errors."""
    try:
        from ft_export import ExportOptions, ExportSource
        from ft_export.merge import saved_dtype
        from ft_export.registry import get_exporter
        from ft_export.types import no_progress
    except ImportError as error:
        raise RunExportError(
            f"exporting needs ft-export: pip install ft-export ({error})"
        ) from None
    from ft_runs.run_lock import reading

    exporter = get_exporter(fmt)
    # A trainer still running on this run does not prune the checkpoint while it is read.
    with reading(run.path):
        found = run_source(run, checkpoint, warn=say)
        source = ExportSource(
            base=found.base,
            adapters=found.adapters,
            chat_template=found.chat_template,
            name=found.name,
            quantized_base=found.quantized_base,
        )
        label = quant or (
            "f16" if fmt in ("gguf", "gguf-lora") else dtype or saved_dtype(source.base)
        )
        label = "q8_0" if fmt == "ollama" and not quant else label
        out = output or (found.exports / f"{fmt}-{label}")
        options = ExportOptions(dtype=dtype, quant=quant, verify=verify)
        return exporter.export(source, out, options, progress or no_progress)


def push_adapter(run: RunFolder, repo_id: str, token: Any, *, private: bool = False) -> str:
    """Upload `run`'s final adapter (PEFT layout, or a full fine-tune's folder) to the Hub
    repo `repo_id`; the commit's URL. Raises RunExportError without ft-export or a final
    adapter, ft-export's ExportError when the Hub refuses."""
    try:
        from ft_export.hub import push_to_hub
    except ImportError as error:
        raise RunExportError(f"pushing to the Hub needs ft-export ({error})") from None
    if not run.adapter.is_dir():
        raise RunExportError(f"run {run.id} has no final adapter to push ({run.adapter})")
    return push_to_hub(
        run.adapter, repo_id, token, private=private, message=f"Upload adapter of ft run {run.id}"
    )


def after_training(run: RunFolder, config: Any, secrets: Any, say: Say) -> dict[str, Any]:
    """What `output.export` and `output.push_to_hub` ask for once a run completed: each export
    (checked) and the adapter's upload. A failure is said and recorded, not raised: the run
    itself completed. Returns what was done, for run.json."""
    done: dict[str, Any] = {}
    for fmt in config.output.export:
        say(f"output.export: exporting {run.id} as {fmt}")
        try:
            result = export_run(run, fmt, say=say)
        except Exception as error:  # an export must not undo a finished run
            say(f"warning: output.export {fmt} failed: {error}")
            done[fmt] = {"error": str(error)}
            continue
        verified = getattr(getattr(result, "verification", None), "passed", None)
        say(f"  {fmt}: {result.path}" + (" (checked)" if verified else ""))
        done[fmt] = {"path": str(result.path), "verified": verified}
    if config.output.push_to_hub:
        repo = config.output.push_to_hub
        try:
            url = push_adapter(run, repo, secrets.get("hf_token"))
        except Exception as error:
            say(f"warning: output.push_to_hub {repo} failed: {error}")
            done["push_to_hub"] = {"repo": repo, "error": str(error)}
        else:
            say(f"output.push_to_hub: pushed {run.adapter} to {repo}: {url}")
            done["push_to_hub"] = {"repo": repo, "url": url}
    return done
