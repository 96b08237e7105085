"""Turn a train.yml into a finished run: resolve the model, prepare the data, pick the backend,
make the run folder, record the job, train, record how it ended.

Each step says what it decided and why through `say` (the CLI prints it), so a user can see
which model file, which data format and which backend were used without reading logs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from ft_config import (
    PASSWORDS_FILE,
    TrainConfig,
    load_config,
    load_secrets,
    redact_urls_in,
    resolve_path,
    unstructure_config,
)
from ft_runs.launching import StopFlag, run_distributed
from ft_runs.preflight import memory_guard, plan_run
from ft_runs.run_data import (
    PreparedData,
    materialize_split,
    prepare,
    record_datasets,
    without_url_credentials,
)
from ft_runs.run_folder import RunFolder, git_commit_of, new_run_id
from ft_runs.run_lock import RunLock
from ft_runs.sinks import (
    EventSinks,
    EveryNSteps,
    MessagesAtLevel,
    StoreSink,
    TensorBoardSink,
    WandbSink,
    at_level,
)
from ft_runs.store import STATUS_BY_REASON, Heartbeat, JobStore
from ft_runs.trainers import get_trainer
from ft_train_core.protocol import Event, Launch, TrainJob, TrainResult
from ft_train_core.state import config_differences

Say = Callable[[str], None]


class ResumeRefused(Exception):
    """Resuming would continue with a different config or dataset than the run started with."""


@attrs.frozen
class RunOutcome:
    run_id: str
    folder: RunFolder
    result: TrainResult
    status: str


def project_dir_of(config_path: Path | None) -> Path:
    return Path(config_path).resolve().parent if config_path else Path.cwd()


def train(
    config_path: Path | None,
    *,
    overrides: Iterable[str] = (),
    profile: str | None = None,
    resume: str | None = None,
    force: bool = False,
    say: Say = print,
    display: Callable[[Event], None] | None = None,
    progress: Callable[[str, int], None] | None = None,
    store: JobStore | None = None,
    should_stop: Callable[[], bool] | None = None,
    launch: Launch | None = None,
) -> RunOutcome:
    """Run a training job from a train.yml (or the defaults when `config_path` is None).

    `resume` is a run id, id prefix or `"latest"`: the run continues in its own folder from its
    newest valid checkpoint. Without `config_path` it uses the train.yml the run started from.
    A changed config or dataset is refused unless `force`. Returns how the run ended; raises
    the libraries' own errors (ConfigError, DataError, ...) for problems the user must fix,
    and `RunLocked` when another live process trains the run.

    This process holds the run folder's lock (`ft_runs.run_lock`) from the moment it has a
    folder until it returns: one writer per run.
    """
    # Ctrl-C and SIGTERM are answered from here on: at once while the model loads and the
    # data prepares, with a checkpoint once the training loop runs (`StopFlag`).
    stop = StopFlag()
    with contextlib.ExitStack() as held:
        held.callback(stop.install(say))
        return _train(
            config_path,
            held,
            stop,
            overrides=overrides,
            profile=profile,
            resume=resume,
            force=force,
            say=say,
            display=display,
            progress=progress,
            store=store,
            should_stop=should_stop,
            launch=launch,
        )


def _train(
    config_path: Path | None,
    held: contextlib.ExitStack,
    stop: StopFlag,
    *,
    overrides: Iterable[str],
    profile: str | None,
    resume: str | None,
    force: bool,
    say: Say,
    display: Callable[[Event], None] | None,
    progress: Callable[[str, int], None] | None,
    store: JobStore | None,
    should_stop: Callable[[], bool] | None,
    launch: Launch | None,
) -> RunOutcome:
    overrides = list(overrides)  # read twice: the config, and run.json's record of them
    store = store or JobStore()
    store.mark_stale_runs()
    record = None
    lock: RunLock | None = None
    if resume:
        record = _run_to_resume(store, resume)
        # Before anything else: a second `ft train --resume` of a live run stops here.
        lock = held.enter_context(_lock_to_resume(record))
        _refuse_restarting_a_finished_run(record)
        same_file = (
            config_path is not None
            and record.config_path is not None
            and Path(config_path).resolve() == Path(record.config_path)
        )
        if (
            (config_path is None or same_file)
            and record.config_path
            and Path(record.config_path).exists()
        ):
            config_path = Path(record.config_path)
            # With the --set overrides and profile it started with (new ones win).
            started = _started_with(Path(record.run_dir))
            overrides = [*started.get("overrides", []), *overrides]
            profile = profile or started.get("profile")
            also = "".join(f" --set {o}" for o in started.get("overrides", []))
            also += f" --profile {started['profile']}" if started.get("profile") else ""
            say(f"config: {config_path}{also} (as run {record.id} started)")
        elif config_path is None:
            config_path = RunFolder(Path(record.run_dir)).config_file
            say(f"config: {config_path} (the run's snapshot)")
    config = load_config(config_path, overrides=overrides, profile=profile)
    say = at_level(say, config.logging.level)  # logging.level: what ft tells while it works
    project = project_dir_of(config_path) if record is None else Path(record.project_dir or ".")
    secrets = load_secrets(project_dir_of(config_path) / PASSWORDS_FILE)

    backend = choose_backend(config, say)
    if config.resources.strategy == "fsdp":
        check_sharding(config, backend)
    model = resolve(config, secrets, say)
    store.record_model(
        config.model.name,
        path=model.path,
        kind=model.kind,
        repo_id=model.repo_id,
        revision=model.commit or model.revision,
    )
    token = secrets.get("data_token")
    data = prepare(
        config,
        config_path,
        model.path,
        say,
        progress=progress,
        url_token=token.reveal() if token is not None else None,
    )
    # From here on the run records its config: data URLs keep no credentials in it.
    config = without_url_credentials(config)
    overrides = [redact_urls_in(text) for text in overrides]
    record_datasets(store, data)

    if launch is None or not launch.distributed:
        # train.yml can ask for processes too (resources.nproc_per_node, nnodes, hostfile).
        resources = config.resources
        from_config = Launch(
            nproc=resources.nproc_per_node,
            nnodes=resources.nnodes,
            hostfile=Path(resolve_path(config_path, resources.hostfile))
            if resources.hostfile
            else None,
        )
        if from_config.distributed:
            launch = from_config
    processes = launch.nproc * launch.nnodes if launch is not None and launch.distributed else 1

    resume_from: Path | None = None
    if record is not None:
        resume_from = _resume_point(RunFolder(Path(record.run_dir)), config, data, force, say)
    # Before any run folder exists: a run that cannot fit is refused here, with the figures.
    plan = plan_run(
        config,
        model.path,
        data.train,
        backend,
        held_out=data.split,
        processes=processes,
        resume_from=resume_from,
        say=say,
    )
    if record is not None:
        folder = RunFolder(Path(record.run_dir))
        run_id = record.id
    else:
        runs_dir = Path(resolve_path(config_path, config.output.dir))
        runs_dir.mkdir(parents=True, exist_ok=True)
        run_id = new_run_id(config, runs_dir, taken=store.id_in_use)
        commit, dirty = git_commit_of(Path(config_path)) if config_path else (None, False)
        folder = RunFolder(runs_dir / run_id).create(
            config,
            {
                "config_path": str(Path(config_path).resolve()) if config_path else None,
                "config_commit": commit,
                "config_dirty": dirty,
                "model": {
                    "name": config.model.name,
                    "path": str(model.path),
                    "kind": model.kind,
                    "reason": model.reason,
                    "repo_id": model.repo_id,
                    "revision": model.revision,
                    "commit": model.commit,
                    "source_file": str(model.source_file) if model.source_file else None,
                },
                "data": data.summary,
                "backend": backend,
                "overrides": list(overrides),
                "profile": profile,
                "plan": plan.to_dict(),
            },
        )
        lock = held.enter_context(RunLock(folder.path))
        store.create_run(
            run_id,
            run_dir=folder.path,
            config=unstructure_config(config),
            model=config.model.name,
            method=config.method.name,
            project_dir=project,
            config_path=Path(config_path).resolve() if config_path else None,
            config_commit=commit,
            backend=backend,
        )
        if dirty:
            say(f"note: {config_path} has uncommitted changes; run.json records the commit anyway")
    data = materialize_split(data, folder.path / "data", say)
    folder.update_info(data=data.summary)
    say(f"run {run_id}: {folder.path}")

    job = TrainJob(
        config=config,
        model_path=model.path,
        train_data=data.train,
        validation_data=data.validation,
        run_dir=folder.path,
        resume_from=resume_from,
        plan=plan.batch,
    )
    if record is not None:
        # Steps after the resume point are done again: their records go, not twice.
        _forget_after(folder, store, run_id, _step_of(resume_from))
    store.start_run(run_id, backend=backend)
    emit = EventSinks(folder, [StoreSink(store, run_id)])
    _add_optional_sinks(emit, config, folder, secrets, say)
    if display is not None:
        emit.add(MessagesAtLevel(display, config.logging.level))
    if config.logging.level == "debug":
        emit.add(lambda event: say(f"event: {json.dumps(event, default=str)}"))
    distributed = launch is not None and launch.distributed
    try:
        with (
            Heartbeat(store.path, run_id) as heartbeat,
            # In-process training is interrupted at the hard limit; launched processes are
            # asked to checkpoint at the soft one (their group is killed if Ctrl-C follows).
            memory_guard(
                config, plan, stop=stop.set, say=say, interrupt=not distributed
            ) as watchdog,
        ):
            emit.sinks[0].heartbeat = heartbeat  # type: ignore[attr-defined]
            if distributed:
                assert launch is not None
                requested = lambda: stop.requested() or bool(should_stop and should_stop())  # noqa: E731
                result = run_distributed(
                    backend, job, launch, emit, requested, say, lock=lock, on_start=stop.arm
                )
            else:
                # The loop's first question arms the flag: from then on a signal checkpoints.
                stopping = lambda: stop() or bool(should_stop and should_stop())  # noqa: E731
                result = get_trainer(backend).train(job, emit, stopping)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
        if type(exc).__name__ == "MemoryLimitReached":
            reason = "memory"
        status = "interrupted" if reason in ("interrupted", "memory") else "failed"
        store.finish_run(run_id, status, reason=reason, error=f"{type(exc).__name__}: {exc}")
        raise
    if watchdog.soft_reached and result.reason == "interrupted":
        result = attrs.evolve(result, reason="memory")
    status = STATUS_BY_REASON.get(result.reason, "completed")
    store.finish_run(run_id, status, reason=result.reason)
    if status == "completed" and (config.output.export or config.output.push_to_hub):
        from ft_runs.exports import after_training

        folder.update_info(outputs=after_training(folder, config, secrets, say))
    return RunOutcome(run_id, folder, result, status)


def _run_to_resume(store: JobStore, resume: str) -> Any:
    from ft_runs.store import RunNotFound

    if resume in ("latest", "last"):
        records = store.list_runs(limit=1)
        if not records:
            raise RunNotFound("there is no run to resume: `ft train` starts one")
        return records[0]
    return store.get_run(resume)


def _lock_to_resume(record: Any) -> RunLock:
    from ft_runs.store import RunNotFound

    folder = Path(record.run_dir)
    if not folder.is_dir():
        raise RunNotFound(
            f"run {record.id}'s folder {folder} no longer exists: there is nothing to resume. "
            "`ft train` starts a new run"
        )
    return RunLock(folder)


def _refuse_restarting_a_finished_run(record: Any) -> None:
    """A completed run whose checkpoints are all damaged (or gone) is an error, never a
    silent restart from step 0 over its results."""
    from ft_models.checkpoint import CorruptCheckpoint, list_checkpoints, read_manifest

    folder = RunFolder(Path(record.run_dir))
    ends = [e for e in folder.events("end") if STATUS_BY_REASON.get(e.get("reason")) == "completed"]
    if record.status != "completed" and not ends:
        return
    problems = []
    for _step, path in reversed(list_checkpoints(folder.checkpoints)):
        try:
            read_manifest(path)
            return  # one usable checkpoint: resuming continues from it
        except CorruptCheckpoint as exc:
            problems.append(str(exc))
    step = ends[-1].get("step") if ends else record.step
    why = (
        f"none of its {len(problems)} checkpoint(s) can be resumed from: " + "; ".join(problems)
        if problems
        else f"it has no checkpoints left in {folder.checkpoints}"
    )
    adapter = f" Its final adapter is {folder.adapter}." if folder.adapter.is_dir() else ""
    raise ResumeRefused(
        f"run {record.id} completed at step {step}, and {why}. Resuming would train it again "
        f"from step 0 over its results, so ft does not.{adapter} Start a new run with `ft train`"
    )


def _step_of(checkpoint: Path | None) -> int:
    from ft_models.checkpoint import read_manifest

    return 0 if checkpoint is None else read_manifest(checkpoint, verify_hashes=False).step


def _forget_after(folder: RunFolder, store: JobStore, run_id: str, step: int) -> None:
    """Drop what the run recorded after `step` (metrics.jsonl, the store, best.json) before
    it trains those steps again from an older checkpoint."""
    best = folder.forget_after(step)
    store.forget_after(
        run_id,
        step,
        best_step=int(best["step"]) if best else None,
        best_eval_loss=best.get("eval_loss") if best else None,
    )


def _started_with(run_dir: Path) -> dict[str, Any]:
    """The `overrides` and `profile` a run was started with (run.json; none for older runs)."""
    try:
        info = RunFolder(run_dir).info()
    except (OSError, ValueError):
        return {}
    return {"overrides": list(info.get("overrides") or []), "profile": info.get("profile")}


def check_sharding(config: TrainConfig, backend: str) -> None:
    """Refuse `resources.strategy: fsdp` where the trainer cannot shard (its capabilities say),
    in one line and before any process starts or any run folder is made."""
    sharded = get_trainer(backend).capabilities().sharded_methods
    if not sharded:
        raise ValueError(
            f"resources.strategy: fsdp is a PyTorch strategy; the {backend} backend replicates "
            "the model in each process. Remove it, or set training.backend: torch"
        )
    if config.method.name not in sharded:
        raise ValueError(
            f"resources.strategy: fsdp does not support method {config.method.name} (its weights "
            f"cannot be sharded and gathered by FSDP here): use resources.strategy: ddp, or "
            f"method {' / '.join(sharded)}"
        )


def choose_backend(config: TrainConfig, say: Say) -> str:
    from ft_models.device import pick_backend

    if config.training.backend == "auto" and config.model.task == "sequence-classification":
        say("backend: torch (auto: sequence classification trains on the torch backend)")
        return "torch"
    choice = pick_backend(config.training.backend)
    say(f"backend: {choice.backend} ({choice.reason})")
    return choice.backend


def resolve(config: TrainConfig, secrets: Any, say: Say) -> Any:
    from ft_models.resolve import resolve_model

    resolved = resolve_model(
        config.model.name,
        revision=config.model.revision,
        trust_remote_code=config.model.trust_remote_code,
        token=secrets.get("hf_token"),
    )
    say(f"model: {resolved.path} ({resolved.reason})")
    return resolved


def _resume_point(
    folder: RunFolder, config: TrainConfig, data: PreparedData, force: bool, say: Say
) -> Path | None:
    from ft_models.checkpoint import latest_valid_checkpoint

    differences = config_differences(load_config(folder.config_file), config)
    started = folder.info().get("data", {})
    if started.get("train_cache_key") and started.get("train_cache_key") != data.summary.get(
        "train_cache_key"
    ):
        differences.append("the training data changed")
    if differences and not force:
        raise ResumeRefused(
            f"cannot resume {folder.id}: "
            + "; ".join(differences)
            + ". Use --force to resume anyway."
        )
    found = latest_valid_checkpoint(folder.checkpoints)
    if found is None:
        say(f"{folder.id} has no valid checkpoint: starting from step 0 in the same run folder")
        return None
    path, manifest = found
    say(f"resuming {folder.id} from step {manifest.step} ({path.name})")
    return path


def _add_optional_sinks(
    emit: EventSinks, config: TrainConfig, folder: RunFolder, secrets: Any, say: Say
) -> None:
    every = config.logging.every
    if config.logging.tensorboard:
        emit.add(EveryNSteps(TensorBoardSink(folder), every))
    if config.logging.wandb:
        try:
            emit.add(
                EveryNSteps(
                    WandbSink(
                        folder,
                        project=config.logging.wandb_project,
                        mode=config.logging.wandb_mode,
                        api_key=secrets.get("wandb_api_key"),
                        config=unstructure_config(config),
                    ),
                    every,
                )
            )
        except (ImportError, RuntimeError) as exc:
            say(f"warning: W&B logging is off: {exc}")
