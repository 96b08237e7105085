"""What the OpenAI-compatible routes may serve (`ServerSettings.inference_allow`): base models
by name, and the adapters of completed runs by run id or glob (`*`: every completed run), each
adapter under its run id with its base model as `parent`. Nothing else is ever loaded: a client
names a model by id, never by path."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import attrs

from ft_server.settings import ServerSettings

_GLOB = set("*?[")


@attrs.frozen
class ServedModel:
    """One entry of /v1/models."""

    id: str
    base: str
    """What Generator.load takes: the base model's name or folder."""
    adapter: Path | None = None
    parent: str | None = None
    created: int = 0
    template: str | None = None
    """A chat template's source (the one the run was trained with); None: the tokenizer's."""


def served_models(settings: ServerSettings, store: Any = None) -> dict[str, ServedModel]:
    """The models `settings.inference_allow` lets the server load, by id (see module doc).
    `store`: the JobStore to read runs from (None: the one of `settings.paths`)."""
    allow = tuple(settings.inference_allow)
    models: dict[str, ServedModel] = {}
    for entry in allow:
        if not _GLOB & set(entry):
            models[entry] = ServedModel(id=entry, base=entry)
    for run in _completed_runs(settings, store):
        if not (
            "*" in allow
            or run.parent in allow
            or any(fnmatch.fnmatchcase(run.id, entry) for entry in allow)
        ):
            continue
        models.pop(run.id, None)  # an entry naming a run is that run, not a base model
        models[run.id] = run
        if run.parent is not None and run.parent not in models:
            models[run.parent] = ServedModel(id=run.parent, base=run.base, created=run.created)
    return models


def _completed_runs(settings: ServerSettings, store: Any = None) -> list[ServedModel]:
    from ft_runs.exports import RunExportError, run_source
    from ft_runs.run_folder import RunFolder
    from ft_runs.store import JobStore

    if store is None:
        if not settings.paths.database.is_file():
            return []
        store = JobStore(settings.paths.database)
    runs = []
    for record in store.list_runs(status="completed"):
        folder = RunFolder(Path(record.run_dir))
        adapter = Path(record.adapter_path) if record.adapter_path else folder.adapter
        if not (adapter / "adapter_config.json").is_file():
            continue  # a full fine-tune or a run without its final adapter: no adapter to serve
        try:
            source = run_source(folder)
        except (RunExportError, OSError, ValueError):
            continue  # its base model is gone: not servable
        runs.append(
            ServedModel(
                id=record.id,
                base=str(source.base),
                adapter=adapter,
                parent=record.model,
                created=int(record.ended_at or record.created_at),
                template=source.chat_template,
            )
        )
    return runs


class NoRuns:
    """A store with no runs: what is served when the job store cannot be opened."""

    def list_runs(self, **_: Any) -> list[Any]:
        return []


__all__ = ["NoRuns", "ServedModel", "served_models"]
