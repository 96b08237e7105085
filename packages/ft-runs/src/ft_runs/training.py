"""Turn a train.yml into a finished run: resolve the model, prepare the data, pick the backend,
make the run folder, record the job, train, record how it ended.

Each step says what it decided and why through `say` (the CLI prints it), so a user can see
which model file, which data format and which backend were used without reading logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

from ft_config import (
    PASSWORDS_FILE,
    TrainConfig,
    load_config,
    load_secrets,
    resolve_path,
    unstructure_config,
)
from ft_runs.preflight import memory_guard, plan_run
from ft_runs.run_folder import RunFolder, git_commit_of, new_run_id
from ft_runs.sinks import (
    EventSinks,
    EveryNSteps,
    MessagesAtLevel,
    StoreSink,
    TensorBoardSink,
    WandbSink,
    at_level,
)
from ft_runs.store import Heartbeat, JobStore
from ft_runs.trainers import get_trainer
from ft_train_core.jobs import STOP_FILE, job_spec
from ft_train_core.protocol import Event, Launch, TrainJob, TrainResult
from ft_train_core.state import config_differences

Say = Callable[[str], None]
STATUS_BY_REASON = {
    "completed": "completed",
    "max_steps": "completed",
    "early_stopping": "completed",
    "interrupted": "interrupted",
    "memory": "interrupted",  # stopped by the memory watchdog, with a checkpoint
    "nan": "failed",
}


class ResumeRefused(Exception):
    """Resuming would continue with a different config or dataset than the run started with."""


@attrs.frozen
class PreparedData:
    train: Path
    validation: Path | None
    summary: dict[str, Any]
    split: tuple[float, int] | None = None
    """(validation_split, seed) still to hold out of `train`, or None."""


@attrs.frozen
class RunOutcome:
    run_id: str
    folder: RunFolder
    result: TrainResult
    status: str


class StopFlag:
    """Set by the first Ctrl-C (the trainer saves a checkpoint and stops); a second Ctrl-C
    interrupts at once."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def install(self, say: Say) -> Callable[[], None]:
        """Handle SIGINT/SIGTERM until the returned function is called (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._event.is_set():
                raise KeyboardInterrupt
            self._event.set()
            say("stopping: saving a checkpoint first (press Ctrl-C again to stop at once)")

        for sig in previous:
            signal.signal(sig, handle)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore


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
    the libraries' own errors (ConfigError, DataError, ...) for problems the user must fix.
    """
    overrides = list(overrides)  # read twice: the config, and run.json's record of them
    store = store or JobStore()
    store.mark_stale_runs()
    record = None
    if resume:
        record = _run_to_resume(store, resume)
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
    data = prepare(config, config_path, model.path, say, progress=progress)
    _record_datasets(store, data)

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
        run_id = new_run_id(config, runs_dir)
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
    stop = StopFlag()
    restore = stop.install(say)
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
            stopping = lambda: stop() or bool(should_stop and should_stop())  # noqa: E731
            if distributed:
                assert launch is not None
                result = run_distributed(backend, job, launch, emit, stopping, say)
            else:
                result = get_trainer(backend).train(job, emit, stopping)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
        if type(exc).__name__ == "MemoryLimitReached":
            reason = "memory"
        status = "interrupted" if reason in ("interrupted", "memory") else "failed"
        store.finish_run(run_id, status, reason=reason, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        restore()
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


def _record_datasets(store: JobStore, data: PreparedData) -> None:
    for role in ("train", "validation"):
        key = data.summary.get(f"{role}_cache_key")
        path = data.train if role == "train" else data.validation
        if key and path:
            store.record_dataset(
                key,
                path=path,
                source=data.summary.get(f"{role}_source", ""),
                format=data.summary.get("format"),
                rows=data.summary.get("examples" if role == "train" else "validation_examples"),
                tokens=data.summary.get("tokens") if role == "train" else None,
            )


def run_distributed(
    backend: str,
    job: TrainJob,
    launch: Launch,
    emit: Callable[[Event], None],
    should_stop: Callable[[], bool],
    say: Say,
) -> TrainResult:
    """Start the trainer processes and relay rank 0's events until they exit.

    A stop request (Ctrl-C) creates the job's stop file. Rank 0 sees it between two steps and
    every process learns rank 0's answer (the loops broadcast it), so they all stop at the same
    step, save a checkpoint together and exit: the run resumes from it with `ft train
    --resume`. A second Ctrl-C kills the processes at once.
    """
    import subprocess
    import time

    events = job.run_dir / "launch-events.jsonl"
    events.unlink(missing_ok=True)
    (job.run_dir / "result.json").unlink(missing_ok=True)
    stop_file = job.run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)
    job_file = job.run_dir / "job.json"
    from ft_config import atomic_write_text

    atomic_write_text(job_file, json.dumps(job_spec(job, events=events), indent=2) + "\n")
    argv = list(get_trainer(backend).launch_command(job_file, launch))
    say(f"launching {launch.nproc} process(es): {' '.join(argv[1:6])} ...")
    process = subprocess.Popen(argv, cwd=job.run_dir, start_new_session=True)
    offset = 0
    last: dict[str, Any] = {}

    def relay() -> None:
        nonlocal offset
        if not events.exists():
            return
        with events.open("r", encoding="utf-8") as f:
            f.seek(offset)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break  # a line still being written: read it next time
                offset += len(line.encode("utf-8"))
                event = json.loads(line)
                last[event.get("type", "")] = event
                emit(event)

    stopped = False
    try:
        while process.poll() is None:
            relay()
            if should_stop() and not stopped:
                stopped = True
                say(
                    "stopping after this step: the trainer processes save a checkpoint and exit "
                    "(Ctrl-C again kills them; `ft train --resume` continues from the last checkpoint)"
                )
                stop_file.touch()
            time.sleep(0.5)
    except BaseException:
        # A second Ctrl-C, or any failure here: the processes must not outlive `ft train`.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    finally:
        stop_file.unlink(missing_ok=True)
    relay()
    result_file = job.run_dir / "result.json"
    if process.returncode != 0 or not result_file.exists():
        raise RuntimeError(
            f"the {backend} trainer processes failed (exit {process.returncode}); "
            f"their output is above, the job is {job_file}"
        )
    done = json.loads(result_file.read_text(encoding="utf-8"))
    best = last.get("end", {}).get("best_checkpoint")
    return TrainResult(
        done["reason"],
        int(done["step"]),
        Path(done["adapter_path"]) if done.get("adapter_path") else None,
        Path(best) if best else None,
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


def prepare(
    config: TrainConfig,
    config_path: Path | None,
    model_path: Path,
    say: Say,
    *,
    progress: Callable[[str, int], None] | None = None,
) -> PreparedData:
    """Prepare (or reuse from the cache) the training and validation data for this model.

    The validation set is the `data.validation` file when set; otherwise `validation_split`
    of the prepared training examples, held out with a seeded split (stratified by label when
    the dataset has labels). Held-out splits are written by :func:`materialize_split` into the
    run folder, so a run keeps exactly the data it trained on.
    """
    from ft_data.cache import prepare_cached
    from ft_data.config import options_from_config

    settings = options_from_config(config.data, config_dir=project_dir_of(config_path))

    def one(source: str, role: str) -> Any:
        tick = (lambda rows: progress(role, rows)) if progress else None
        result = prepare_cached(source, model_path, settings.prepare, progress=tick)
        state = "reused" if result.reused else "prepared"
        say(f"{role} data: {state} {result.path.name}: {result.report.summary()}")
        return result

    train = one(settings.train, "training")
    summary: dict[str, Any] = {
        "train_source": settings.train,
        "train_cache_key": result_key(train.path),
        "format": train.report.format,
        "format_reason": train.report.format_reason,
        "template": train.report.template,
        "examples": train.report.examples,
        "tokens": train.report.tokens,
        "trained_tokens": train.report.trained_tokens,
        "left_out": dict(train.report.counts),
        "seed": config.training.seed,
    }
    if settings.validation:
        validation = one(settings.validation, "validation")
        summary.update(
            validation_source=settings.validation,
            validation_cache_key=result_key(validation.path),
            validation_examples=validation.report.examples,
        )
        return PreparedData(train.path, validation.path, summary, split=None)
    fraction = settings.validation_split
    summary["validation_split"] = fraction
    if fraction <= 0:
        say("validation: off (validation_split is 0 and no validation file)")
        return PreparedData(train.path, None, summary, split=None)
    return PreparedData(train.path, None, summary, split=(fraction, config.training.seed))


def result_key(path: Path) -> str | None:
    from ft_data.hdf5 import read_attrs

    attrs = read_attrs(path) or {}
    return attrs.get("cache_key")


def materialize_split(data: PreparedData, folder: Path, say: Say) -> PreparedData:
    """Write the held-out split of `data` as `folder/train.h5` and `folder/validation.h5`
    (reused when both exist: a resumed run keeps its split)."""
    if data.split is None:
        return data
    from ft_data.hdf5 import PreparedDataset, PreparedWriter
    from ft_data.split import split_rows

    train_file, validation_file = folder / "train.h5", folder / "validation.h5"
    fraction, seed = data.split
    if not (train_file.exists() and validation_file.exists()):
        with PreparedDataset(data.train) as source:
            labels = source.labels()
            train_rows, held_out = split_rows(
                len(source),
                fraction=fraction,
                seed=seed,
                labels=None if labels is None else list(labels),
            )
            if len(held_out) == 0:
                say(f"validation: off ({len(source)} example(s) are too few to hold any out)")
                return PreparedData(data.train, None, data.summary, split=None)
            attrs = source.attrs
            parent = str(attrs.get("cache_key", ""))
            for role, path, rows in (
                ("train", train_file, train_rows),
                ("validation", validation_file, held_out),
            ):
                key = hashlib.sha256(f"{parent}:{role}:{fraction}:{seed}".encode()).hexdigest()
                subset = {**attrs, "cache_key": key, "subset_of": parent, "subset": role}
                names = source.label_names
                with PreparedWriter(path, subset, label_names=names) as w:
                    for row in rows:
                        tokens, mask = source[int(row)]
                        label = None if labels is None else names[int(labels[int(row)])]
                        w.add(tokens, mask, label=label)
                    if labels is not None:
                        w.finish_labels()
        say(
            f"validation: {len(held_out)} of {len(held_out) + len(train_rows)} examples held out "
            f"(validation_split {fraction}, seed {seed})"
        )
    summary = {
        **data.summary,
        "train_file": str(train_file),
        "validation_file": str(validation_file),
    }
    return PreparedData(train_file, validation_file, summary, split=None)


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
