"""Hyper-parameter studies over HTTP (`ft tune`): start one as a job, see where it stands, list
its trials; ft's default search space and the settings a space may vary; a search space
checked as a study checks it before it starts. The study runs in a job's worker process
(`ft_server.worker`) through `ft_runs.tune`, as `ft tune` runs it; each trial is an ordinary
run in the job store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field

from ft_config import ConfigError, load_config
from ft_runs.store import JobNotFound, JobStore
from ft_server.dashboard import object_of, schema_field
from ft_server.dashboard_api import ConfigBody, config_text, problem_rows
from ft_server.errors import ApiError
from ft_server.files import safe_name
from ft_server.jobs import new_job_id
from ft_server.jobs_api import TrainStart, job_json, manager, prepare_training

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
    prepared = prepare_training(body, request.app.state.settings, jobs.job_dir(job_id))
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
    except (SearchSpaceError, tune.TuneError) as exc:  # the checks of /api/tune/validate
        raise ApiError(400, str(exc), code="invalid_study") from None
    job = jobs.submit("tune", {**prepared, "study_dir": str(files.dir)}, job_id)
    return {**job_json(job, jobs), "study": tune.study_status(files, jobs.store)}


# Sections whose settings shape the trained model: what a search space varies.
_TUNABLE_SECTIONS = ("model", "data", "method", "training")


@router.get("/api/tune/space")
def tune_space_info() -> dict[str, Any]:
    """ft's default search space (what an empty `tune.search_space` searches, docs/tune.md),
    and the settings a space may vary: train.yml's numeric, true/false and fixed-choice
    settings of model, data, method and training (and any the default space names), each with
    its type, bounds, choices, default and help from the schema."""
    from ft_config import json_schema
    from ft_runs.tune_space import DEFAULT_SPACE

    schema = json_schema()
    settings = []
    for section in _TUNABLE_SECTIONS:
        spec = schema["properties"][section]
        section_schema = object_of(spec)
        assert section_schema is not None, section
        for name, sub in section_schema["properties"].items():
            key = f"{section}.{name}"
            item = _tunable(schema_field(key, name, sub), sub, named=key in DEFAULT_SPACE)
            if item is not None:
                settings.append(item)
    return {
        "default": DEFAULT_SPACE,
        "settings": settings,
        "samplers": ["tpe", "random", "grid"],
    }


def _tunable(field: dict[str, Any], spec: dict[str, Any], named: bool) -> dict[str, Any] | None:
    # The builder's reading of the setting (`schema_field`), in the editor's terms.
    kind, types = field["kind"], field["types"]
    if kind == "boolean":
        setting, choices = "boolean", [False, True]
    elif kind == "number":
        setting, choices = ("number" if "number" in types else "integer"), field["enum"]
    elif kind == "enum":
        setting, choices = "choice", field["enum"]
    elif named:
        setting, choices = "list" if "array" in types else "string", []
    else:
        return None  # text, paths, mappings: not a search space's business
    return {
        "key": field["key"],
        "type": setting,
        "choices": choices,
        "minimum": spec.get("minimum"),
        "exclusive_minimum": spec.get("exclusiveMinimum"),
        "maximum": spec.get("maximum"),
        "nullable": field["nullable"],
        "default": field["default"],
        "help": field["help"],
    }


@router.post("/api/tune/validate")
def validate_tune(body: ConfigBody) -> dict[str, Any]:
    """Check a train.yml's `tune:` section as a study checks it before it starts (`ft tune`,
    POST /api/tune/start): the config loads, the search space parses, `sampler: grid` can
    enumerate it, and every value it can draw is one its setting takes. `problems` are the
    same messages (where, key, what) as /api/config/validate's; `parameters` the settings
    searched, in order; `grid_size` the combinations with `sampler: grid`."""
    from ft_runs.tune_space import SearchSpaceError, check_space, grid_size

    text = config_text(body)
    try:
        config = load_config("train.yml", text=text, overrides=body.overrides, profile=body.profile)
    except ConfigError as exc:
        return {
            "valid": False,
            "problems": problem_rows(exc),
            "message": str(exc),
            "parameters": [],
        }
    try:
        parameters = check_space(config)
    except SearchSpaceError as exc:
        problem = {"location": None, "key": exc.key, "message": exc.problem, "text": str(exc)}
        return {"valid": False, "problems": [problem], "message": str(exc), "parameters": []}
    tune = config.tune
    searched = [p for p in parameters if p.kind != "derived"]
    # check_space has gridded it already when the sampler is grid; other spaces may not grid.
    combinations = grid_size(parameters) if tune.sampler == "grid" else None
    space = "ft's default space" if not tune.search_space else "the search space"
    derived = len(parameters) - len(searched)
    message = f"{space} is valid: {len(searched)} settings searched" + (
        f", {derived} derived" if derived else ""
    )
    message += f"; {tune.trials} trials, sampler {tune.sampler}"
    if combinations is not None:
        message += f" ({combinations} combinations)"
    return {
        "valid": True,
        "problems": [],
        "message": message,
        "parameters": [{"name": p.name, "kind": p.kind} for p in parameters],
        "grid_size": combinations,
    }


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
