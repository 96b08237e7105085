"""Hyper-parameter studies over HTTP (`ft tune`): start one as a job, see where it stands, list
its trials. The study runs in a job's worker process (`ft_server.worker`) through
`ft_runs.tune`, as `ft tune` runs it; each trial is an ordinary run in the job store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field

from ft_runs.store import JobNotFound, JobStore
from ft_server.errors import ApiError
from ft_server.files import safe_name
from ft_server.jobs import new_job_id
from ft_server.jobs_api import TrainStart, _prepare, job_json, manager

router = APIRouter(tags=["tune"])


class TuneStart(TrainStart):
    """Start a study of a train.yml (given as for /api/training/start); its `tune:` section
    says what to search, the fields here override it."""

    trials: int | None = Field(None, ge=1, description="finished trials to reach (tune.trials)")
    timeout_minutes: float | None = Field(None, gt=0, description="tune.timeout_minutes")
    sampler: Literal["tpe", "random", "grid"] | None = None
    name: str | None = Field(None, description="the study's name (default: study-<job id>)")


@router.post("/api/tune/start", status_code=202)
def start_tune(body: TuneStart, request: Request) -> dict[str, Any]:
    """Queue a study; it runs when a training slot is free. The search space is checked now:
    a space ft cannot use is a 400, not a failed job."""
    from ft_runs import tune
    from ft_runs.tune_space import SearchSpaceError

    jobs = manager(request)
    job_id = new_job_id()
    prepared = _prepare(body, request.app.state.settings, jobs.job_dir(job_id))
    name = safe_name(body.name, what="study", param="name") if body.name else f"study-{job_id}"
    try:
        files = tune.start_study(
            Path(prepared["config_path"]),
            name=name,
            overrides=prepared["overrides"],
            profile=prepared["profile"],
            trials=body.trials,
            timeout_minutes=body.timeout_minutes,
            sampler=body.sampler,
        )
    except (SearchSpaceError, tune.TuneError) as exc:
        raise ApiError(400, str(exc), code="invalid_study") from None
    job = jobs.submit("tune", {**prepared, "study_dir": str(files.dir)}, job_id)
    return {**job_json(job, jobs), "study": tune.study_status(files, jobs.store)}


@router.get("/api/tune/{job_id}/status")
def tune_status(job_id: str, request: Request) -> dict[str, Any]:
    """The job, and its study: trials asked for, finished, by state, the best so far."""
    jobs = manager(request)
    job, files = _study_job(jobs.store, job_id)
    from ft_runs import tune

    status = tune.study_status(files, jobs.store)
    status.pop("rows")
    return {**job_json(job, jobs), "study": status}


@router.get("/api/tune/{job_id}/trials")
def tune_trials(job_id: str, request: Request) -> dict[str, Any]:
    """Every trial of the study: number, state, settings, metric, pruned at, run id."""
    jobs = manager(request)
    _, files = _study_job(jobs.store, job_id)
    from ft_runs import tune

    return {"job_id": job_id, "trials": tune.study_status(files, jobs.store)["rows"]}


def _study_job(store: JobStore, job_id: str) -> tuple[Any, Any]:
    from ft_runs import tune

    try:
        job = store.get_job(job_id)
    except JobNotFound:
        raise ApiError(404, f"no job {job_id!r}", code="job_not_found") from None
    if job.kind != "tune":
        raise ApiError(404, f"job {job_id} is a {job.kind} job, not a study", code="not_a_study")
    return job, tune.StudyFiles(Path(job.request["study_dir"]))


def run_tune_job(store: JobStore, request: dict[str, Any], say: Any) -> tuple[dict[str, Any], str]:
    """The worker's side: run the study to its end (or to Ctrl-C's SIGTERM: the trial in
    progress checkpoints and is retried when the job is resumed)."""
    from ft_runs import tune

    files = tune.StudyFiles(Path(request["study_dir"]))
    result = tune.run_study(files, say=say, store=store)
    outcome = {
        "study": files.name,
        "study_dir": str(files.dir),
        "stopped_by": result.stopped_by,
        "best": result.best,
        "report": str(result.report) if result.report else None,
    }
    return outcome, "interrupted" if result.stopped_by == "interrupted" else "completed"
