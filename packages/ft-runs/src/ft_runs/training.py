"""Turn a train.yml into a finished run: resolve the model, prepare the data, pick the backend,
make the run folder, record the job, train, record how it ended.

Each step says what it decided and why through `say` (the CLI prints it), so a user can see
which model file, which data format and which backend were used without reading logs.
"""

from __future__ import annotations

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
from ft_runs.protocols import Event, TrainJob, TrainResult
from ft_runs.run_folder import RunFolder, git_commit_of, new_run_id
from ft_runs.sinks import EventSinks, StoreSink, TensorBoardSink, WandbSink
from ft_runs.store import Heartbeat, JobStore
from ft_runs.trainers import get_trainer

Say = Callable[[str], None]
STATUS_BY_REASON = {
    "completed": "completed",
    "max_steps": "completed",
    "early_stopping": "completed",
    "interrupted": "interrupted",
    "nan": "failed",
}


class ResumeRefused(Exception):
    """Resuming would continue with a different config or dataset than the run started with."""


@attrs.frozen
class PreparedData:
    train: Path
    validation: Path | None
    summary: dict[str, Any]


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
    store: JobStore | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunOutcome:
    """Run a training job from a train.yml (or the defaults when `config_path` is None).

    `resume` is a run id (or `"latest"`) to continue from its newest valid checkpoint; a
    changed config or dataset is refused unless `force`. Returns how the run ended; raises the
    libraries' own errors (ConfigError, DataError, ...) for problems the user must fix.
    """
    config = load_config(config_path, overrides=overrides, profile=profile)
    project = project_dir_of(config_path)
    secrets = load_secrets(project / PASSWORDS_FILE)
    store = store or JobStore()

    backend = choose_backend(config, say)
    model = resolve(config, secrets, say)
    data = prepare(config, config_path, model.path, say)

    resume_from: Path | None = None
    if resume:
        record = (
            store.list_runs(limit=1)[0]
            if resume == "latest" and store.list_runs(limit=1)
            else store.get_run(resume)
        )
        folder = RunFolder(Path(record.run_dir))
        resume_from = _resume_point(folder, config, data, force, say)
        run_id = record.id
    else:
        runs_dir = Path(resolve_path(config_path, config.output.dir))
        runs_dir.mkdir(parents=True, exist_ok=True)
        run_id = new_run_id(config, runs_dir)
        commit, dirty = git_commit_of(Path(config_path)) if config_path else (None, False)
        folder = RunFolder(runs_dir / run_id).create(
            config,
            {
                "config_path": str(config_path) if config_path else None,
                "config_commit": commit,
                "config_dirty": dirty,
                "model": {
                    "name": config.model.name,
                    "path": str(model.path),
                    "kind": model.kind,
                    "reason": model.reason,
                    "repo_id": getattr(model, "repo_id", None),
                    "revision": getattr(model, "revision", None),
                },
                "data": data.summary,
                "backend": backend,
            },
        )
        store.create_run(
            run_id,
            run_dir=folder.path,
            config=unstructure_config(config),
            model=config.model.name,
            method=config.method.name,
            project_dir=project,
            config_path=config_path,
            config_commit=commit,
            backend=backend,
        )
    say(f"run {run_id}: {folder.path}")

    job = TrainJob(
        config=config,
        model_path=model.path,
        train_data=data.train,
        validation_data=data.validation,
        run_dir=folder.path,
        resume_from=resume_from,
    )
    trainer = get_trainer(backend)
    stop = StopFlag()
    restore = stop.install(say)
    store.start_run(run_id, backend=backend)
    emit = EventSinks(folder, [StoreSink(store, run_id)])
    _add_optional_sinks(emit, config, folder, secrets, say)
    if display is not None:
        emit.add(display)
    try:
        with Heartbeat(store.path, run_id) as heartbeat:
            emit.sinks[0].heartbeat = heartbeat  # type: ignore[attr-defined]
            result = trainer.train(job, emit, lambda: stop() or bool(should_stop and should_stop()))
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
        status = "interrupted" if reason == "interrupted" else "failed"
        store.finish_run(run_id, status, reason=reason, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        restore()
    status = STATUS_BY_REASON.get(result.reason, "completed")
    store.finish_run(run_id, status, reason=result.reason)
    return RunOutcome(run_id, folder, result, status)


def choose_backend(config: TrainConfig, say: Say) -> str:
    from ft_models.device import pick_backend

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
    config: TrainConfig, config_path: Path | None, model_path: Path, say: Say
) -> PreparedData:
    """Prepare (or reuse from the cache) the training and validation data for this model."""
    from ft_data.config import prepare_from_config

    prepared = prepare_from_config(
        config, config_path=config_path, tokenizer_path=model_path, say=say
    )
    return PreparedData(
        train=prepared.train, validation=prepared.validation, summary=prepared.summary
    )


def _resume_point(
    folder: RunFolder, config: TrainConfig, data: PreparedData, force: bool, say: Say
) -> Path | None:
    from ft_models.checkpoint import latest_valid_checkpoint

    differences = _config_differences(folder, config)
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


def _config_differences(folder: RunFolder, config: TrainConfig) -> list[str]:
    old = load_config(folder.config_file)
    before, after = _flatten(unstructure_config(old)), _flatten(unstructure_config(config))
    # Settings that may change on resume without changing what is learned.
    harmless = ("logging.", "output.", "resources.", "training.max_steps", "training.epochs")
    return [
        f"{key} was {before.get(key)!r}, now {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key) and not key.startswith(harmless)
    ]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("columns", "search_space"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _add_optional_sinks(
    emit: EventSinks, config: TrainConfig, folder: RunFolder, secrets: Any, say: Say
) -> None:
    if config.logging.tensorboard:
        emit.add(TensorBoardSink(folder))
    if config.logging.wandb:
        try:
            emit.add(
                WandbSink(
                    folder,
                    project=config.logging.wandb_project,
                    mode=config.logging.wandb_mode,
                    api_key=secrets.get("wandb_api_key"),
                    config=unstructure_config(config),
                )
            )
        except (ImportError, RuntimeError) as exc:
            say(f"warning: W&B logging is off: {exc}")
