"""Training jobs over HTTP: start, status, list, cancel, resume, and live metrics (JSON and
Server-Sent Events). The queue itself is `ft_server.jobs.JobManager`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ft_config import ConfigError, atomic_write_text, dump_yaml, load_config, resolve_path
from ft_runs.store import JOB_STATUSES, JobNotFound, JobRecord, RunNotFound
from ft_server.errors import ApiError
from ft_server.files import inside, inside_any, safe_name
from ft_server.jobs import JobManager, JobStateError, new_job_id
from ft_server.settings import ServerSettings

router = APIRouter(tags=["training"])


def setup(app: FastAPI) -> None:
    async def start(app: FastAPI) -> None:
        app.state.jobs = JobManager(app.state.settings)
        await app.state.jobs.start()

    async def stop(app: FastAPI) -> None:
        await app.state.jobs.stop()

    app.state.on_start.append(start)
    app.state.on_stop.append(stop)


def manager(request: Request) -> JobManager:
    return request.app.state.jobs


class TrainStart(BaseModel):
    """Start a training job. Give the config one way: `config` (train.yml as JSON),
    `config_yaml` (train.yml's text) or `project` (a project folder holding train.yml)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = Field(None, description="train.yml as a JSON object")
    config_yaml: str | None = Field(None, description="train.yml's text")
    project: str | None = Field(None, description="a project folder (inside an allowed root)")
    overrides: list[str] = Field(
        default_factory=list, description="`--set`-style overrides: `training.max_steps=2`"
    )
    profile: str | None = None
    dataset: str | None = Field(
        None, description="an uploaded dataset's name (GET /api/datasets): trains on it"
    )


@router.post("/api/training/start", status_code=202)
def start_training(body: TrainStart, request: Request) -> dict[str, Any]:
    """Queue a training job; it runs when a slot is free (`max_concurrent_trainings`)."""
    settings: ServerSettings = request.app.state.settings
    jobs = manager(request)
    job_id = new_job_id()
    prepared = prepare_training(body, settings, jobs.job_dir(job_id))
    job = jobs.submit("train", prepared, job_id)
    return job_json(job, jobs)


@router.get("/api/training/{job_id}/status")
def training_status(job_id: str, request: Request) -> dict[str, Any]:
    jobs = manager(request)
    return job_json(_job(jobs, job_id), jobs)


@router.get("/api/jobs", tags=["jobs"])
def list_jobs(request: Request, status: str | None = Query(None)) -> dict[str, Any]:
    """Every job, oldest first; `status` filters (queued, running, completed, ...)."""
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(JOB_STATUSES)}", param="status")
    jobs = manager(request)
    return {"jobs": [job_json(j, jobs) for j in jobs.store.list_jobs(status=status)]}


@router.get("/api/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    jobs = manager(request)
    return job_json(_job(jobs, job_id), jobs)


@router.get("/api/jobs/{job_id}/log", tags=["jobs"])
def job_log(
    job_id: str, request: Request, tail: int = Query(200, ge=1, le=10_000)
) -> dict[str, Any]:
    """The last `tail` lines of what the job said (what `ft train` would have printed)."""
    jobs = manager(request)
    _job(jobs, job_id)
    path = jobs.job_dir(job_id) / "job.log"
    lines = (
        path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    )
    return {"job_id": job_id, "lines": lines[-tail:]}


@router.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    """Queued: cancelled at once. Running: a checkpoint is saved, then it stops (the status
    turns `cancelled` when it has)."""
    jobs = manager(request)
    _job(jobs, job_id)
    return job_json(jobs.cancel(job_id), jobs)


@router.post("/api/jobs/{job_id}/resume", tags=["jobs"])
def resume_job(job_id: str, request: Request) -> dict[str, Any]:
    """Queue an interrupted, cancelled or failed job again: its run continues from its newest
    checkpoint."""
    jobs = manager(request)
    _job(jobs, job_id)
    try:
        return job_json(jobs.resume(job_id), jobs)
    except JobStateError as exc:
        raise ApiError(409, str(exc), code="job_state") from None


class ExportStart(BaseModel):
    """Export a run, as `ft export RUN --format ...` does (into the run's exports/ folder)."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(..., description="peft, hf, gguf, gguf-lora, mlx, mlx-adapter, ollama")
    checkpoint: str | None = Field(None, description="best, last, a step; default the final")
    quant: str | None = None
    dtype: str | None = None


class EvaluateStart(BaseModel):
    """Evaluate a run, as `ft evaluate RUN` does (results stored with the run)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    dataset: str | None = Field(None, description="an uploaded dataset's name (default: the run's)")
    max_examples: int = Field(50, ge=1, le=10_000)
    max_tokens: int = Field(128, ge=1, le=4096)
    samples: int = Field(5, ge=0, le=100)
    compare_base: bool = True


@router.post("/api/runs/{run_id}/export", status_code=202, tags=["runs"])
def export_run(run_id: str, body: ExportStart, request: Request) -> dict[str, Any]:
    """Queue an export of the run; the job's `result` names the files when it completes."""
    jobs = manager(request)
    run = _known_run(jobs, run_id)
    job = jobs.submit("export", {"run_id": run.id, **body.model_dump()})
    jobs.store.update_job(job.id, run_id=run.id)
    return job_json(jobs.store.get_job(job.id), jobs)


@router.post("/api/runs/{run_id}/evaluate", status_code=202, tags=["runs"])
def evaluate_run(run_id: str, body: EvaluateStart, request: Request) -> dict[str, Any]:
    """Queue an evaluation of the run; GET /api/runs/{run_id}/evaluations lists the results."""
    settings: ServerSettings = request.app.state.settings
    jobs = manager(request)
    run = _known_run(jobs, run_id)
    fields = body.model_dump(exclude={"dataset"})
    if body.dataset is not None:
        name = safe_name(body.dataset, what="dataset", param="dataset")
        data = inside(settings.uploads_dir, name, what="dataset", param="dataset")
        if not data.is_file():
            raise ApiError(
                404,
                f"no uploaded dataset {name!r}; GET /api/datasets lists them",
                code="dataset_not_found",
                param="dataset",
            )
        fields["data"] = str(data)
    job = jobs.submit("evaluate", {"run_id": run.id, **fields})
    jobs.store.update_job(job.id, run_id=run.id)
    return job_json(jobs.store.get_job(job.id), jobs)


def _known_run(jobs: JobManager, run_id: str) -> Any:
    try:
        return jobs.store.get_run(run_id)
    except RunNotFound as exc:
        raise ApiError(
            404, str(exc).replace("`ft runs list`", "GET /api/runs"), code="run_not_found"
        ) from None


# --- metrics ------------------------------------------------------------------------------


@router.get("/api/metrics/{job_id}", tags=["metrics"])
def metrics(
    job_id: str, request: Request, since: int = Query(-1, description="only steps after this")
) -> dict[str, Any]:
    """The job's metric points after step `since`, one per step: `train` (loss, learning
    rate, grad norm, tokens/s, ETA, memory) and `eval` (eval loss) values, and at an
    evaluation with samples (`training.eval_samples`) `samples`: the answers to validation
    prompts, each `{prompt, output, reference, output_tokens}`."""
    jobs = manager(request)
    job = _job(jobs, job_id)
    points = _points(jobs, job, since)
    return {
        "job_id": job.id,
        "run_id": job.run_id,
        "status": job.status,
        "points": points,
        "last_step": points[-1]["step"] if points else since if since >= 0 else None,
    }


@router.get("/api/metrics/{job_id}/stream", tags=["metrics"])
async def metrics_stream(
    job_id: str,
    request: Request,
    since: int = Query(-1),
    last_event_id: str | None = Header(None),
) -> StreamingResponse:
    """Server-Sent Events: one `metrics` event per step (`id:` is the step), sent once the
    step is complete (its eval and samples included); a reconnect with `Last-Event-ID` gets
    exactly the steps after it. A comment line every `heartbeat_seconds` while idle; an `end`
    event when the job ends."""
    jobs = manager(request)
    _job(jobs, job_id)
    if last_event_id is not None:
        try:
            since = int(last_event_id)
        except ValueError:
            raise ApiError(
                400, "Last-Event-ID must be a step number", param="Last-Event-ID"
            ) from None
    settings: ServerSettings = request.app.state.settings
    return StreamingResponse(
        _events(jobs, job_id, since, request, settings.heartbeat_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    jobs: JobManager, job_id: str, since: int, request: Request, heartbeat: float
) -> AsyncIterator[str]:
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        job = await asyncio.to_thread(jobs.store.get_job, job_id)
        finished = job.status not in ("queued", "running")
        points = await asyncio.to_thread(_points, jobs, job, since)
        if not finished and points:
            points = points[:-1]  # the newest step may still get its eval: sent once complete
        for point in points:
            yield f"id: {point['step']}\nevent: metrics\ndata: {json.dumps(point)}\n\n"
            since = point["step"]
            last_sent = time.monotonic()
        if finished:
            end = {"status": job.status, "run_id": job.run_id, "error": job.error}
            yield f"event: end\ndata: {json.dumps(end)}\n\n"
            return
        if time.monotonic() - last_sent >= heartbeat:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(0.5, heartbeat))


def _points(jobs: JobManager, job: JobRecord, since: int) -> list[dict[str, Any]]:
    """The run's metrics after `since`, one point per step. A train point also gets `eta_s`:
    the seconds the remaining steps take at the run's average pace so far; `samples` is the
    list of the evaluation's samples."""
    if not job.run_id:
        return []
    rows = jobs.store.metrics(job.run_id)
    try:
        total = jobs.store.get_run(job.run_id).total_steps
    except RunNotFound:
        total = None
    trains = [(r["step"], r["time"]) for r in rows if r["kind"] == "train"]
    first_step, first_time = trains[0] if trains else (None, None)
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = row.pop("step")
        if step <= since:
            continue
        kind = row.pop("kind")
        at = row.pop("time", None)
        if kind == "train" and total and first_step is not None and step > first_step and at:
            pace = (at - first_time) / (step - first_step)
            row["eta_s"] = round(max(total - step, 0) * pace, 1)
        by_step.setdefault(step, {"step": step})[kind] = point_value(kind, row)
    return [by_step[s] for s in sorted(by_step)]


def point_value(kind: str, row: dict[str, Any]) -> Any:
    """What a metric point holds under `kind`: the row's values; for `samples`, their list."""
    return row.get("samples", []) if kind == "samples" else row


# --- helpers ------------------------------------------------------------------------------


def _job(jobs: JobManager, job_id: str) -> JobRecord:
    try:
        return jobs.store.get_job(job_id)
    except JobNotFound:
        raise ApiError(
            404, f"no job {job_id!r}; GET /api/jobs lists them", code="job_not_found"
        ) from None


def job_json(job: JobRecord, jobs: JobManager) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "queue_position": jobs.queue_position(job),
        "cancel_requested": bool(job.cancel_requested),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "error": job.error,
        "run_id": job.run_id,
        "run": None,
        "result": job.result,
    }
    if job.run_id:
        try:
            run = jobs.store.get_run(job.run_id)
        except RunNotFound:
            return out
        out["run"] = {
            "id": run.id,
            "status": run.status,
            "step": run.step,
            "total_steps": run.total_steps,
            "best_eval_loss": run.best_eval_loss,
            "run_dir": run.run_dir,
            "adapter_path": run.adapter_path,
            "checkpoints": [c["step"] for c in jobs.store.checkpoints(run.id)],
        }
    return out


def prepare_training(body: TrainStart, settings: ServerSettings, folder: Path) -> dict[str, Any]:
    """The job's request as the worker reads it: a train.yml path, overrides, profile. Checks
    the config now, so a bad one is a 400 instead of a failed job."""
    given = [n for n in ("config", "config_yaml", "project") if getattr(body, n) is not None]
    if len(given) > 1:
        raise ApiError(
            400, f"give one of config, config_yaml or project, not {' and '.join(given)}"
        )
    overrides = list(body.overrides)
    if body.dataset is not None:
        name = safe_name(body.dataset, what="dataset", param="dataset")
        data = inside(settings.uploads_dir, name, what="dataset", param="dataset")
        if not data.is_file():
            raise ApiError(
                404,
                f"no uploaded dataset {name!r}; GET /api/datasets lists them",
                code="dataset_not_found",
                param="dataset",
            )
        overrides.append(f"data.train={data}")
    if body.project is not None:
        project = inside_any(settings.roots(), Path(body.project), what="project", param="project")
        config_path = project / "train.yml"
        if not config_path.is_file():
            raise ApiError(400, f"{project} has no train.yml", param="project")
        source = "project"
    else:
        text = body.config_yaml if body.config_yaml is not None else dump_yaml(body.config or {})
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "train.yml"
        atomic_write_text(config_path, text)
        # A run started from a body lands in the server's runs folder, whatever it says.
        overrides.append(f"output.dir={settings.runs_dir}")
        source = "body"
    try:
        config = load_config(config_path, overrides=overrides, profile=body.profile)
    except ConfigError as exc:
        raise ApiError(
            400, str(exc).replace(str(folder) + "/", ""), code="invalid_config"
        ) from None
    if source == "body":
        _check_paths(config, config_path, settings)
    return {
        "config_path": str(config_path),
        "overrides": overrides,
        "profile": body.profile,
        "source": source,
    }


def _check_paths(config: Any, config_path: Path, settings: ServerSettings) -> None:
    """Local paths in a config sent by a client must lie in the server's folders."""
    data = config.data
    values: list[tuple[str, str]] = []
    train = data.train if isinstance(data.train, list) else [data.train]
    for i, source in enumerate(train):
        path = source if isinstance(source, str) else source.path
        values.append((f"data.train[{i}]" if isinstance(data.train, list) else "data.train", path))
    for key in ("validation", "test"):
        if getattr(data, key, None):
            values.append((f"data.{key}", getattr(data, key)))
    values.append(("model.name", config.model.name))
    for key, value in values:
        if not value or "://" in value:
            continue
        candidate = Path(resolve_path(config_path, value))
        if Path(value).is_absolute() or value.startswith(".") or candidate.exists():
            inside_any(settings.roots(), candidate, what=key, param=key)
