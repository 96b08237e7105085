"""Datasets, models and runs over HTTP: uploads (streamed to disk, size-limited, validated with
`ft dataset prepare`'s report), dataset list/preview/stats, model search (catalog, local
cache, Hub), runs and their evaluations."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ft_config import ModelConfig
from ft_runs.store import JobStore, RunNotFound
from ft_server.errors import ApiError
from ft_server.files import inside, inside_any, safe_name
from ft_server.settings import ServerSettings

router = APIRouter()

UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md")


def settings_of(request: Request) -> ServerSettings:
    return request.app.state.settings


# --- datasets -----------------------------------------------------------------------------


@router.post("/api/datasets/upload", status_code=201, tags=["datasets"])
async def upload_dataset(
    request: Request,
    filename: str = Query(..., description="the file's name: only its extension is used"),
    model: str | None = Query(None, description="whose tokenizer checks it (default: ft's)"),
    max_seq_length: int | None = Query(None, ge=8),
) -> dict[str, Any]:
    """Upload a dataset file as the raw request body (`curl --data-binary @train.jsonl
    '.../api/datasets/upload?filename=train.jsonl'`). It is written to disk as it arrives,
    refused past the upload limit (413), and checked like `ft dataset prepare` checks it: the
    answer is that report. The server names the file; a bad file is not kept."""
    settings = settings_of(request)
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ApiError(
            400,
            f"{filename!r}: upload a {', '.join(UPLOAD_SUFFIXES)} file (the extension says "
            "how it is read)",
            code="unsupported_format",
            param="filename",
        )
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(filename).stem).strip("-_")[:40] or "dataset"
    name = f"{stem}-{secrets.token_hex(4)}{suffix}"
    folder = settings.uploads_dir
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = folder / f".part-{name}"  # keeps the extension the reader goes by
    size = 0
    try:
        with partial.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise ApiError(
                        413,
                        f"upload is larger than the server's limit of "
                        f"{settings.max_upload_bytes} bytes",
                        code="body_too_large",
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise ApiError(400, "the upload is empty: send the file as the request body")
        report = await asyncio.to_thread(
            _prepare_report, settings, partial, name, model, max_seq_length
        )
        final = folder / name
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    return {"name": name, "size": size, "report": report}


@router.get("/api/datasets", tags=["datasets"])
def list_datasets(request: Request) -> dict[str, Any]:
    """The uploaded datasets, newest first."""
    folder = settings_of(request).uploads_dir
    files = (
        [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        if (folder.is_dir())
        else []
    )
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return {
        "datasets": [
            {"name": p.name, "size": p.stat().st_size, "uploaded_at": p.stat().st_mtime}
            for p in files
        ]
    }


@router.get("/api/datasets/{name}/preview", tags=["datasets"])
def preview_dataset(
    name: str, request: Request, rows: int = Query(5, ge=1, le=100)
) -> dict[str, Any]:
    """The first `rows` rows as read from the file, and the detected format."""
    from ft_data import DataError, detect_format, read_rows

    path = dataset_path(request, name)
    try:
        found = []
        for _number, row in read_rows(path):
            found.append(row)
            if len(found) >= rows:
                break
        detection = detect_format(found) if found else None
    except DataError as exc:
        raise ApiError(400, data_error(exc, name), code="invalid_data") from None
    return {
        "name": name,
        "rows": found,
        "format": detection.format.name if detection else None,
        "detected": detection.reason if detection else None,
    }


@router.get("/api/datasets/{name}/stats", tags=["datasets"])
async def dataset_stats(
    name: str,
    request: Request,
    model: str | None = Query(None),
    max_seq_length: int | None = Query(None, ge=8),
) -> dict[str, Any]:
    """`ft dataset stats`' numbers: rows, tokens, lengths, with the tokenizer of `model`."""
    settings = settings_of(request)
    path = dataset_path(request, name)
    return await asyncio.to_thread(_stats, settings, path, name, model, max_seq_length)


@router.delete("/api/datasets/{name}", tags=["datasets"])
def delete_dataset(name: str, request: Request) -> dict[str, Any]:
    dataset_path(request, name).unlink()
    return {"deleted": name}


def dataset_path(request: Request, name: str) -> Path:
    folder = settings_of(request).uploads_dir
    path = inside(folder, safe_name(name, what="dataset"), what="dataset")
    if not path.is_file():
        raise ApiError(
            404, f"no dataset {name!r}; GET /api/datasets lists them", code="dataset_not_found"
        )
    return path


def tokenizer_for(settings: ServerSettings, model: str | None) -> tuple[Any, str]:
    from ft_data import load_tokenizer

    name = model or ModelConfig().name
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith(".") or path.exists():
        path = inside_any(settings.roots(), path, what="model", param="model")
        return load_tokenizer(path), name
    from ft_models.resolve import resolve_model

    try:
        resolved = resolve_model(name)
    except Exception as exc:
        raise ApiError(
            400, f"model {name!r}: {exc}", code="model_not_found", param="model"
        ) from None
    return load_tokenizer(resolved.path), name


def prepare_options(max_seq_length: int | None) -> Any:
    import attrs

    from ft_config import DataConfig
    from ft_data import options_from_config

    data = DataConfig()
    if max_seq_length is not None:
        data = attrs.evolve(data, max_seq_length=max_seq_length)
    return options_from_config(data, config_dir=Path.cwd())


def _prepare_report(
    settings: ServerSettings, path: Path, name: str, model: str | None, max_seq_length: int | None
) -> dict[str, Any]:
    from ft_data import DataError, prepare_dataset, prepare_summary

    tokenizer, model_name = tokenizer_for(settings, model)
    options = prepare_options(max_seq_length)
    started = time.perf_counter()
    target = path.with_name(path.name + ".h5")
    try:
        result = prepare_dataset(str(path), tokenizer, target, options.prepare, rebuild=True)
    except DataError as exc:
        raise ApiError(400, data_error(exc, name), code="invalid_data") from None
    finally:
        target.unlink(missing_ok=True)
    summary = prepare_summary(
        result,
        source=name,
        model=model_name,
        max_seq_length=options.max_seq_length,
        seconds=time.perf_counter() - started,
    )
    summary.pop("output", None)  # a temporary file, gone now
    for reason in summary.get("left_out_by_reason", {}).values():
        for row in reason["rows"]:
            row["file"] = name
    if summary["examples"] == 0:
        raise ApiError(
            400,
            f"{name}: no usable example in {summary['rows_read']} row(s) "
            f"(format {summary['format']}); see report.left_out_by_reason",
            code="invalid_data",
        )
    return summary


def _stats(
    settings: ServerSettings, path: Path, name: str, model: str | None, max_seq_length: int | None
) -> dict[str, Any]:
    from ft_data import DataError, DatasetCache, stats_summary

    tokenizer, _ = tokenizer_for(settings, model)
    options = prepare_options(max_seq_length)
    try:
        cache = DatasetCache(settings.paths.home / "cache" / "datasets")
        result = cache.prepare(str(path), tokenizer, options.prepare)
    except DataError as exc:
        raise ApiError(400, data_error(exc, name), code="invalid_data") from None
    summary = stats_summary(result, source=name, max_seq_length=options.max_seq_length)
    summary.pop("prepared", None)  # the server's cache path
    return summary


def data_error(error: Any, name: str) -> str:
    """`name:line: row N: key 'x': what` and the hint, with the server's paths left out."""
    where = [name + (f":{error.line}" if error.line is not None else "")]
    if error.row is not None:
        where.append(f"row {error.row}")
    if error.key is not None:
        where.append(f"key {error.key!r}")
    text = ": ".join([*where, error.what])
    return f"{text} (hint: {error.hint})" if error.hint else text


# --- models -------------------------------------------------------------------------------


@router.get("/api/models/search", tags=["models"])
def search_models(
    request: Request,
    q: str = Query("", description="matches model ids and catalog aliases"),
    max_params: str | None = Query(None, description="e.g. 2B, 500M"),
    fits_memory: bool = Query(False, description="only models whose LoRA training fits here"),
    hub: bool = Query(True, description="also search the Hugging Face Hub"),
    limit: int = Query(20, ge=1, le=200),
) -> dict[str, Any]:
    """The catalog (with training memory and whether it fits this machine), the models in the
    local cache, and the Hub's models (through huggingface_hub, `HF_ENDPOINT`)."""
    from ft_models.catalog import parse_parameters
    from ft_models.fits import catalog_memory, memory_budget

    try:
        max_parameters = parse_parameters(max_params) if max_params else None
    except ValueError as exc:
        raise ApiError(400, f"max_params: {exc}", param="max_params") from None
    budget = memory_budget()
    needle = q.lower()
    catalog = [
        row
        for row in catalog_memory(
            max_parameters=max_parameters, budget=budget if fits_memory else None
        )
        if needle in row["alias"].lower() or needle in row["repo_id"].lower()
    ]
    if not fits_memory:
        for row in catalog:
            need = row["memory"].get("lora")
            row["fits"] = need is not None and need <= budget.usable_bytes
    local = _cached(needle)
    found: list[dict[str, Any]] = []
    hub_error = None
    if hub and q:
        from ft_models.catalog import entry_for_repo
        from ft_models.hub import ModelError
        from ft_models.hub import search_models as hub_search

        try:
            results = hub_search(q, limit=limit, max_parameters=max_parameters)
        except ModelError as exc:
            hub_error = str(exc)
        else:
            for result in results:
                entry = entry_for_repo(result.repo_id)
                found.append({**result.as_dict(), "alias": entry.alias if entry else None})
    return {
        "query": q,
        "memory": budget.as_dict(),
        "catalog": catalog[:limit],
        "local": local[:limit],
        "hub": found,
        "hub_error": hub_error,
    }


class PullStart(BaseModel):
    """Download a model into the local cache, as `ft models pull NAME` does."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="a catalog alias or a Hugging Face repo id")
    revision: str | None = None


@router.post("/api/models/pull", status_code=202, tags=["models"])
def pull_model(body: PullStart, request: Request) -> dict[str, Any]:
    """Queue a download; the job's `result` shows `bytes` so far, then where the model is.
    Names only (an alias or `org/name`): a client cannot point the server at a path."""
    from ft_server.jobs_api import job_json

    name = body.model
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", name) or (
        ".." in name
    ):
        raise ApiError(
            400,
            f"model {name!r}: give a catalog alias or a Hub repo id (org/name)",
            code="invalid_name",
            param="model",
        )
    jobs = request.app.state.jobs
    job = jobs.submit("pull", {"model": name, "revision": body.revision})
    return job_json(job, jobs)


def _cached(needle: str) -> list[dict[str, Any]]:
    from ft_models.cached import cached_models

    listing = cached_models()
    rows = [
        {"repo_id": m["repo_id"], "alias": m["alias"], "size": m["size"], "kind": "hub"}
        for m in listing.get("hub", [])
    ]
    rows += [
        {"repo_id": m.get("name"), "alias": None, "size": m.get("size"), "kind": "gguf"}
        for m in listing.get("gguf", [])
    ]
    return [r for r in rows if needle in (r["repo_id"] or "").lower()]


# --- runs ---------------------------------------------------------------------------------


def store_of(request: Request) -> JobStore:
    jobs = getattr(request.app.state, "jobs", None)
    return jobs.store if jobs is not None else JobStore(settings_of(request).paths.database)


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "reason": run.reason,
        "model": run.model,
        "method": run.method,
        "backend": run.backend,
        "step": run.step,
        "total_steps": run.total_steps,
        "best_eval_loss": run.best_eval_loss,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "run_dir": run.run_dir,
        "adapter_path": run.adapter_path,
    }


@router.get("/api/runs", tags=["runs"])
def list_runs(
    request: Request, status: str | None = Query(None), limit: int = Query(100, ge=1, le=1000)
) -> dict[str, Any]:
    """Every run in the job store (those of `ft train` too), newest first."""
    return {"runs": [_run_json(r) for r in store_of(request).list_runs(status=status, limit=limit)]}


@router.get("/api/runs/{run_id}", tags=["runs"])
def get_run(run_id: str, request: Request) -> dict[str, Any]:
    store = store_of(request)
    run = run_or_404(store, run_id)
    return {**_run_json(run), "checkpoints": store.checkpoints(run.id), "config": run.config}


@router.get("/api/runs/{run_id}/evaluations", tags=["runs"])
def run_evaluations(run_id: str, request: Request) -> dict[str, Any]:
    """The run's evaluations (`ft evaluate`), oldest first."""
    store = store_of(request)
    run = run_or_404(store, run_id)
    rows = store.evaluations(run.id)
    for row in rows:
        row.pop("metrics_json", None)
    return {"run_id": run.id, "evaluations": rows}


def run_or_404(store: JobStore, run_id: str) -> Any:
    try:
        return store.get_run(run_id)
    except RunNotFound as exc:
        raise ApiError(
            404, str(exc).replace("`ft runs list`", "GET /api/runs"), code="run_not_found"
        ) from None
