"""The REST routes the dashboard needed that no client had yet: the machine's resource use, the
train.yml schema, validation and memory estimate, a dataset as the model sees it (template
applied, trained tokens marked), its quality report, row edits saved as a new version, a run's
metrics, summary and export files. They are ordinary public routes (same key, same guards):
the dashboard has no private back door, and any client may call them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ft_config import ConfigError, atomic_write_text, dump_yaml, load_config
from ft_server.data_api import (
    data_error,
    dataset_path,
    prepare_options,
    run_or_404,
    settings_of,
    store_of,
    tokenizer_for,
)
from ft_server.errors import ApiError
from ft_server.files import inside, inside_any
from ft_server.jobs_api import point_value
from ft_server.settings import ServerSettings

router = APIRouter()


# --- the machine --------------------------------------------------------------------------

_CPU_LAST: list[tuple[int, int]] = []


def _cpu_percent() -> float | None:
    """CPU use since the previous call (the first call: since boot), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle, total = values[3] + (values[4] if len(values) > 4 else 0), sum(values)
    before = _CPU_LAST[-1] if _CPU_LAST else (0, 0)
    _CPU_LAST[:] = [(idle, total)]
    busy = (total - before[1]) - (idle - before[0])
    return round(100 * busy / max(total - before[1], 1), 1)


def _gpus() -> list[dict[str, Any]]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [
                smi,
                "--query-gpu=name,memory.total,memory.used,utilization.gpu",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, total, used, util = (p.strip() for p in line.split(","))
        gpus.append(
            {
                "name": name,
                "memory_total_bytes": int(float(total)) * 1024 * 1024,
                "memory_used_bytes": int(float(used)) * 1024 * 1024,
                "utilization_percent": float(util) if util.replace(".", "").isdigit() else None,
            }
        )
    return gpus


@router.get("/api/system", tags=["server"])
def system() -> dict[str, Any]:
    """What the machine is using now: CPU (since the previous call), load, RAM (a container's
    limit caps it), GPUs (NVIDIA, through nvidia-smi); `memory_kind` says whether training
    memory is a GPU's, unified memory (Apple Silicon) or RAM."""
    from ft_models.machine import machine_memory
    from ft_models.ram import ram

    memory = ram()
    budget, kind = machine_memory()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_percent": _cpu_percent(),
        "load_average": list(load) if load else None,
        "ram_total_bytes": memory.total_bytes,
        "ram_available_bytes": memory.available_bytes,
        "memory_kind": kind,
        "memory_budget_bytes": budget,
        "gpus": _gpus(),
        "time": time.time(),
    }


# --- train.yml ----------------------------------------------------------------------------


@router.get("/api/config/schema", tags=["config"])
def config_schema() -> dict[str, Any]:
    """train.yml's JSON Schema, as `ft config schema` prints it."""
    from ft_config import json_schema

    return json_schema()


class ConfigBody(BaseModel):
    """A train.yml, as JSON (`config`) or as its text (`config_yaml`)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = None
    config_yaml: str | None = None
    overrides: list[str] = Field(default_factory=list)
    profile: str | None = None


def config_text(body: ConfigBody) -> str:
    if body.config is not None and body.config_yaml is not None:
        raise ApiError(400, "give config or config_yaml, not both")
    if body.config_yaml is not None:
        return body.config_yaml
    return dump_yaml(body.config or {})


def problem_rows(error: ConfigError) -> list[dict[str, Any]]:
    """A ConfigError's problems as /api/config/validate gives them: where, key, what, and the
    line `ft config validate` prints."""
    return [
        {"location": p.location, "key": p.key, "message": p.message, "text": str(p)}
        for p in error.problems
    ]


@router.post("/api/config/validate", tags=["config"])
def validate_config(body: ConfigBody) -> dict[str, Any]:
    """Check a train.yml as `ft config validate` does: `problems` are its messages (where, key,
    what), `message` its one line when valid. Also the config as YAML (`yaml`, what was given,
    for export) and as JSON (`values`: what was given, for a form to load)."""
    from ft_config import valid_config_line
    from ft_config.yamlfile import read_yaml

    text = config_text(body)
    values: Any = None
    try:
        values = read_yaml(text, "train.yml")[0] if text.strip() else {}
    except Exception:  # the loader below says what is wrong with it
        values = None
    out: dict[str, Any] = {"yaml": text, "values": values if isinstance(values, dict) else None}
    try:
        loaded = load_config("train.yml", text=text, overrides=body.overrides, profile=body.profile)
    except ConfigError as exc:
        return {**out, "valid": False, "problems": problem_rows(exc), "message": str(exc)}
    message = valid_config_line(loaded, "train.yml")
    return {**out, "valid": True, "problems": [], "message": message}


@router.post("/api/config/estimate", tags=["config"])
def estimate_config(body: ConfigBody, request: Request) -> dict[str, Any]:
    """The peak training memory of a train.yml's model, method and batch (ft's estimator, one
    micro-batch of `max_seq_length` tokens), and whether it fits this machine."""
    from ft_models.catalog import find_entry
    from ft_models.fits import memory_budget
    from ft_models.memory import estimate_training_memory
    from ft_models.shape import ModelShape

    settings: ServerSettings = request.app.state.settings
    try:
        config = load_config("train.yml", text=config_text(body), overrides=body.overrides)
    except ConfigError as exc:
        raise ApiError(400, str(exc), code="invalid_config") from None
    name = config.model.name
    entry = find_entry(name)
    shape = entry.shape if entry is not None else None
    if shape is None:
        folder = Path(name).expanduser()
        if folder.is_absolute() and (folder / "config.json").is_file():
            folder = inside_any(settings.roots(), folder, what="model", param="model.name")
            try:
                shape = ModelShape.from_hf_config(
                    json.loads((folder / "config.json").read_text(encoding="utf-8"))
                )
            except (OSError, ValueError, KeyError) as exc:
                raise ApiError(400, f"model {name!r}: {exc}", param="model.name") from None
    if shape is None:
        raise ApiError(
            400,
            f"model {name!r}: no estimate without its shape; name a catalog model or a local "
            "folder holding config.json",
            code="model_unknown",
            param="model.name",
        )
    training, method = config.training, config.method
    batch = training.batch_size if isinstance(training.batch_size, int) else 1
    method_name = method.name if method.name in ("full", "lora", "dora", "qlora") else "lora"
    targets = method.target_modules
    dtype = (
        training.precision
        if training.precision in ("bfloat16", "float16", "float32")
        else ("bfloat16")
    )
    try:
        estimate = estimate_training_memory(
            shape,
            method=method_name,
            batch_size=batch,
            seq_len=config.data.max_seq_length,
            dtype=dtype,
            lora_rank=method.rank,
            lora_targets=targets if isinstance(targets, str) else list(targets),
            quant_bits=method.quant_bits,
            gradient_checkpointing=bool(training.gradient_checkpointing),
            optimizer=training.optimizer,
            lora_dropout=method.dropout,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_config") from None
    budget = memory_budget()
    return {
        "model": name,
        "method": estimate.method,
        "batch_size": estimate.batch_size,
        "seq_len": estimate.seq_len,
        "dtype": estimate.dtype,
        "total_bytes": estimate.total_bytes,
        "breakdown": estimate.breakdown,
        "trainable_parameters": estimate.trainable_parameters,
        "notes": list(estimate.notes),
        "description": estimate.describe(),
        "budget": budget.as_dict(),
        "fits": estimate.total_bytes <= budget.usable_bytes,
    }


# --- datasets -----------------------------------------------------------------------------


@router.get("/api/datasets/{name}/rendered", tags=["datasets"])
async def rendered_dataset(
    name: str,
    request: Request,
    rows: int = Query(5, ge=1, le=50),
    model: str | None = Query(None),
    max_seq_length: int | None = Query(None, ge=8),
) -> dict[str, Any]:
    """The first rows as the model sees them (what `ft dataset inspect` shows): the chat
    template applied, each token's piece of text and whether it is trained."""
    settings = settings_of(request)
    path = dataset_path(request, name)
    return await asyncio.to_thread(_rendered, settings, path, name, rows, model, max_seq_length)


def _rendered(
    settings: ServerSettings,
    path: Path,
    name: str,
    rows: int,
    model: str | None,
    max_seq_length: int | None,
) -> dict[str, Any]:
    from ft_data import DataError
    from ft_data.explain import explain_rows

    tokenizer, model_name = tokenizer_for(settings, model)
    try:
        explanation = explain_rows(
            path, tokenizer, prepare_options(max_seq_length).prepare, count=rows
        )
    except DataError as exc:
        raise ApiError(400, data_error(exc, name), code="invalid_data") from None
    examples = []
    for row in explanation.rows:
        item = row.to_dict()
        item["file"] = name
        item["pieces"] = [
            {"text": p.text, "trained": p.trained, "kept": p.kept} for p in row.pieces
        ]
        examples.append(item)
    return {"name": name, "model": model_name, "detected": explanation.detected, "rows": examples}


@router.get("/api/datasets/{name}/quality", tags=["datasets"])
async def dataset_quality(
    name: str,
    request: Request,
    model: str | None = Query(None),
    eval: str | None = Query(None, description="an uploaded dataset to check overlap with"),
    label_column: str | None = Query(None),
    shown: int = Query(20, ge=0, le=200),
) -> dict[str, Any]:
    """`ft dataset stats`' quality report: exact and near duplicates, lengths with a
    histogram, contamination with `eval`, class balance with `label_column`."""
    settings = settings_of(request)
    path = dataset_path(request, name)
    eval_path = dataset_path(request, eval) if eval else None
    return await asyncio.to_thread(
        _quality, settings, path, name, model, eval_path, label_column, shown
    )


def _quality(
    settings: ServerSettings,
    path: Path,
    name: str,
    model: str | None,
    eval_path: Path | None,
    label_column: str | None,
    shown: int,
) -> dict[str, Any]:
    import attrs

    from ft_config import DataConfig
    from ft_data import DataError, options_from_config, quality_report

    tokenizer, _ = tokenizer_for(settings, model)
    data = DataConfig()
    if label_column:
        data = attrs.evolve(data, label_column=label_column)
    options = options_from_config(data, config_dir=Path.cwd())
    try:
        report = quality_report(
            path,
            tokenizer,
            options.prepare,
            near_threshold=data.near_dup_threshold,
            max_seq_length=options.max_seq_length,
            eval_source=eval_path,
        )
    except DataError as exc:
        raise ApiError(400, data_error(exc, name), code="invalid_data") from None
    out = report.to_dict(shown=shown)
    text = json.dumps(out).replace(str(path.parent) + os.sep, "")  # no server paths
    return {"name": name, "quality": json.loads(text)}


@router.get("/api/datasets/{name}/rows", tags=["datasets"])
def dataset_rows(
    name: str,
    request: Request,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=1000),
) -> dict[str, Any]:
    """Rows `offset`.. of an uploaded dataset as read (row 0 is the first), for editing."""
    from ft_data import DataError, read_rows

    path = dataset_path(request, name)
    found: list[dict[str, Any]] = []
    total = 0
    try:
        for index, (_number, row) in enumerate(read_rows(path)):
            total = index + 1
            if offset <= index < offset + limit:
                found.append({"index": index, "row": row})
    except DataError as exc:
        raise ApiError(400, data_error(exc, name), code="invalid_data") from None
    return {"name": name, "offset": offset, "total": total, "rows": found}


class RowEdits(BaseModel):
    """Changes to an uploaded dataset, saved as a new version (a new name; the old kept)."""

    model_config = ConfigDict(extra="forbid")

    replace: dict[int, dict[str, Any]] = Field(
        default_factory=dict, description="row index (from 0) -> the row's new content"
    )
    delete: list[int] = Field(default_factory=list, description="row indexes to drop")


_VERSION = re.compile(r"^(?P<stem>.+?)(?:-v(?P<n>\d+))?-[0-9a-f]{8}$")


@router.post("/api/datasets/{name}/versions", status_code=201, tags=["datasets"])
def save_version(name: str, body: RowEdits, request: Request) -> dict[str, Any]:
    """Apply `replace` and `delete` to the dataset's rows and save the result as a new JSON
    Lines upload named `STEM-vN-XXXXXXXX.jsonl`; the old file stays as it was."""
    from ft_data import DataError, read_rows

    settings = settings_of(request)
    path = dataset_path(request, name)
    try:
        rows = [row for _number, row in read_rows(path)]
    except DataError as exc:
        raise ApiError(400, data_error(exc, name), code="invalid_data") from None
    bad = sorted(i for i in (*body.replace, *body.delete) if not 0 <= i < len(rows))
    if bad:
        raise ApiError(
            400,
            f"{name} has rows 0 to {len(rows) - 1}; no row {bad[0]}",
            code="invalid_row",
            param="replace" if bad[0] in body.replace else "delete",
        )
    for index, row in body.replace.items():
        rows[index] = row
    dropped = set(body.delete)
    kept = [row for i, row in enumerate(rows) if i not in dropped]
    if not kept:
        raise ApiError(400, "every row was deleted: a version needs at least one row")
    match = _VERSION.match(Path(name).stem)
    stem = match["stem"] if match else Path(name).stem
    version = int(match["n"]) + 1 if match and match["n"] else 2
    new = f"{stem}-v{version}-{secrets.token_hex(4)}.jsonl"
    target = inside(settings.uploads_dir, new, what="dataset")
    atomic_write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return {
        "name": new,
        "previous": name,
        "rows": len(kept),
        "replaced": len(body.replace),
        "deleted": len(dropped),
    }


# --- runs ---------------------------------------------------------------------------------


@router.get("/api/runs/{run_id}/metrics", tags=["runs"])
def run_metrics(
    run_id: str, request: Request, since: int = Query(-1), kind: str | None = Query(None)
) -> dict[str, Any]:
    """A run's metric points (every run, those of `ft train` too): one per step, `train` and
    `eval` values and an evaluation's `samples`, as GET /api/metrics/{job_id} gives them for
    a job."""
    store = store_of(request)
    run = run_or_404(store, run_id)
    by_step: dict[int, dict[str, Any]] = {}
    for row in store.metrics(run.id, kind=kind):
        step = row.pop("step")
        if step <= since:
            continue
        row.pop("time", None)
        what = row.pop("kind")
        by_step.setdefault(step, {"step": step})[what] = point_value(what, row)
    return {"run_id": run.id, "points": [by_step[s] for s in sorted(by_step)]}


@router.get("/api/runs/{run_id}/summary", tags=["runs"])
def run_report(run_id: str, request: Request) -> dict[str, Any]:
    """What `ft runs report` puts in its page: the run's data, losses, timing and its latest
    evaluation, and its settings."""
    from ft_runs.report import latest_evaluation, run_summary
    from ft_runs.run_folder import RunFolder

    store = store_of(request)
    run = run_or_404(store, run_id)
    folder = RunFolder(Path(run.run_dir))
    try:
        summary = run_summary(folder)
        evaluation = latest_evaluation(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ApiError(409, f"run {run.id}: its folder cannot be read: {exc}") from None
    return json.loads(
        json.dumps(
            {
                "run_id": run.id,
                "summary": summary,
                "evaluation": evaluation,
                "settings": run.config,
            },
            default=str,
        )
    )


@router.get("/api/runs/{run_id}/exports", tags=["runs"])
def run_exports(run_id: str, request: Request) -> dict[str, Any]:
    """The files in the run's exports/ folder (what `ft export` wrote), with their sizes. An
    export job's `result` says whether the export was checked (`verified`) and its notes."""
    store = store_of(request)
    run = run_or_404(store, run_id)
    root = Path(run.run_dir) / "exports"
    files = []
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            files.append({"path": path.relative_to(root).as_posix(), "size": path.stat().st_size})
    return {"run_id": run.id, "files": files}


@router.get("/api/runs/{run_id}/exports/{path:path}", tags=["runs"])
def download_export(run_id: str, path: str, request: Request) -> FileResponse:
    """Download one file of the run's exports/."""
    store = store_of(request)
    run = run_or_404(store, run_id)
    root = Path(run.run_dir) / "exports"
    if any(part in ("", ".", "..") or part.startswith(".") for part in path.split("/")):
        raise ApiError(400, f"export path {path!r} is not allowed", code="invalid_name")
    target = inside(root, path, what="export")
    if not target.is_file():
        raise ApiError(404, f"no export file {path!r}; GET /api/runs/{run.id}/exports lists them")
    return FileResponse(target, filename=target.name)
