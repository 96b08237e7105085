"""`ft tune`: a hyper-parameter study of ordinary training runs, on Optuna.

A study lives in `<project>/tune/<name>/`: `study.json` (what it was started with),
`journal.log` (Optuna's journal file: every trial's state, appended and flushed, so a killed
study loses nothing), `report.md` with its plots at the end. Each trial is `ft train` of the
project's train.yml with the trial's settings as `--set` overrides (`ft_runs.tune_space`): a run
folder named `<study>-t<number>`, recorded in the job store and linked to the study there
(`JobStore.record_trial`).

- Pruning: each `eval` event a trainer emits is reported to the trial; when the pruner says the
  trial is behind, `should_stop` answers yes, the trainer checkpoints and stops as after Ctrl-C,
  and the run is recorded `stopped` (reason `pruned`).
- Crash safety: a trial records its process (pid, host) and its run. On start and `--resume`, a
  trial still `RUNNING` whose process is gone (or whose run's heartbeat went stale in the job
  store) is marked failed and queued again with the same settings, at most
  `tune.max_retries` times. Only completed and pruned trials count towards `tune.trials`.
- Memory: a trial whose plan the memory estimate refuses (`PlanRefused`, before any run folder
  exists) is skipped and recorded failed with the reason; it does not count.
- Disk: only the `tune.keep_adapters` best trials keep their adapters and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ft_config import atomic_write_text, load_config
from ft_runs import run_lock, tune_space
from ft_runs.store import JobStore, RunNotFound
from ft_train_core.protocol import Event

Say = Callable[[str], None]
STUDY_FILE = "study.json"
JOURNAL_FILE = "journal.log"
FINISHED_STATES = ("COMPLETE", "PRUNED")
MAX_SKIPPED_IN_A_ROW = 20
"""Trials the memory guard skips one after another before the study gives up: the space
holds (almost) nothing that fits."""


class TuneError(Exception):
    """A study that cannot start or go on; the message says what to do."""


@attrs.frozen
class StudyFiles:
    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def info(self) -> Path:
        return self.dir / STUDY_FILE

    @property
    def journal(self) -> Path:
        return self.dir / JOURNAL_FILE

    @property
    def report(self) -> Path:
        return self.dir / "report.md"


def studies_dir(project: Path) -> Path:
    return Path(project) / "tune"


def find_study(project: Path, name: str | None = None) -> StudyFiles:
    """A study of the project by name, or the newest one."""
    root = studies_dir(project)
    if name:
        path = Path(name) if (Path(name) / STUDY_FILE).is_file() else root / name
        if not (path / STUDY_FILE).is_file():
            raise TuneError(f"no study {name!r} in {root}: `ft tune` starts one")
        return StudyFiles(path.resolve())
    found = sorted(root.glob(f"*/{STUDY_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise TuneError(f"there is no study in {root}: `ft tune` starts one")
    return StudyFiles(found[-1].parent.resolve())


# --- the optuna study -------------------------------------------------------------------------


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    return optuna


def make_sampler(tune: Any, parameters: list[tune_space.Parameter], seed: int) -> Any:
    """`tpe`: multivariate TPE, grouped so conditional parameters are modelled together, after
    a few random trials (a quarter of the study, 2 to 10); `random`; `grid`."""
    optuna = _optuna()
    if tune.sampler == "grid":
        return grid_sampler(tune_space.grid(parameters), seed=seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        multivariate=True,
        group=True,
        n_startup_trials=max(2, min(10, tune.trials // 4)),
        seed=seed,
    )


def _grid_sampler() -> Any:
    optuna = _optuna()

    class Grid(optuna.samplers.GridSampler):  # type: ignore[misc]
        """Optuna's grid, without its `study.stop()` once every combination was drawn: that
        works inside `study.optimize` only, and `run_study` asks `is_exhausted` itself."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return Grid


def grid_sampler(space: dict[str, list[Any]], seed: int) -> Any:
    return _grid_sampler()(space, seed=seed)


def make_pruner(tune: Any) -> Any:
    optuna = _optuna()
    if not tune.pruning:
        return optuna.pruners.NopPruner()
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    # Judged once two trials have finished, from a trial's first evaluation on.
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def open_journal(files: StudyFiles) -> Any:
    """Optuna's storage over the study's journal file (made if new)."""
    _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    journal = str(files.journal)
    return JournalStorage(JournalFileBackend(journal, lock_obj=JournalFileOpenLock(journal)))


def read_study(files: StudyFiles) -> Any | None:
    """The study in `files.journal` as it stands, to read (None: no trial was asked yet)."""
    if not files.journal.is_file():
        return None
    optuna = _optuna()
    try:
        return optuna.load_study(study_name=files.name, storage=open_journal(files))
    except KeyError:
        return None


def open_study(files: StudyFiles, tune: Any, seed: int) -> Any:
    """The study in `files.journal` (made if new), with the sampler and pruner `tune` names.
    The sampler's seed moves on with the trials already run, so a resumed study does not draw
    its first trials' settings again."""
    optuna = _optuna()
    storage = open_journal(files)
    parameters = tune_space.parse_space(tune.search_space)
    existing = 0
    with contextlib.suppress(KeyError):
        existing = len(optuna.load_study(study_name=files.name, storage=storage).trials)
    return optuna.create_study(
        study_name=files.name,
        storage=storage,
        sampler=make_sampler(tune, parameters, seed + existing),
        pruner=make_pruner(tune),
        direction=tune.direction,
        load_if_exists=True,
    )


def finished(study: Any) -> list[Any]:
    """Trials that count towards `tune.trials`: completed or pruned."""
    return [t for t in study.trials if t.state.name in FINISHED_STATES]


# --- dead trials ------------------------------------------------------------------------------


def recover_dead_trials(study: Any, store: JobStore, max_retries: int, say: Say) -> list[int]:
    """Mark failed each `RUNNING` trial whose process is gone, and queue it again with the same
    settings (at most `max_retries` times for one original trial). Returns their numbers."""
    optuna = _optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    store.mark_stale_runs()  # a run whose heartbeat went stale is `interrupted` from here on
    host, recovered = socket.gethostname(), []
    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs_ = trial.user_attrs
        if not _trial_is_dead(attrs_, host, store):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "failed", "its process died")
            if not study._storage.set_trial_state_values(
                trial._trial_id, state=optuna.trial.TrialState.FAIL
            ):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        failed = study._storage.get_trial(trial._trial_id)
        history = failed.system_attrs.get("retry_history", [])
        retry(study, failed)
        again = len(history) < max_retries
        say(
            f"trial {trial.number}: its process died; "
            + ("queued again with the same settings" if again else "not retried (max_retries)")
        )
        recovered.append(trial.number)
    return recovered


def _trial_is_dead(attrs_: dict[str, Any], host: str, store: JobStore) -> bool:
    pid = attrs_.get("pid")
    if (
        attrs_.get("host") == host
        and isinstance(pid, int)
        and pid != os.getpid()
        and not run_lock.pid_alive(pid)
    ):
        return True
    run_id = attrs_.get("run_id")
    if run_id:
        with contextlib.suppress(RunNotFound):
            return store.get_run(run_id).status not in ("queued", "running")
    return False


# --- one trial --------------------------------------------------------------------------------


class TrialMonitor:
    """The `display` of one trial's run: reports each evaluation to the trial, decides whether
    to prune, and keeps what the live table shows."""

    def __init__(self, trial: Any, metric: str, pruning: bool, changed: Callable[[], None]):
        self.trial, self.metric, self.pruning, self.changed = trial, metric, pruning, changed
        self.pruned_at: int | None = None
        self.step, self.total_steps = 0, None
        self.last: float | None = None

    def __call__(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "start":
            self.total_steps = event.get("total_steps")
        elif kind == "step":
            self.step = int(event["step"])
        elif kind == "eval":
            value = event.get(self.metric)
            if isinstance(value, int | float) and math.isfinite(value):
                self.last = float(value)
                self.trial.report(float(value), int(event["step"]))
                if self.pruning and self.pruned_at is None and self.trial.should_prune():
                    self.pruned_at = int(event["step"])
        else:
            return
        self.changed()

    def should_stop(self) -> bool:
        return self.pruned_at is not None


class _LinkingStore(JobStore):
    """The job store, linking the trial to its run as soon as the run is recorded."""

    link: Callable[[str], None] = staticmethod(lambda run_id: None)  # type: ignore[assignment]

    def create_run(self, run_id: str, **kwargs: Any) -> Any:
        record = super().create_run(run_id, **kwargs)
        self.link(run_id)
        return record


@attrs.frozen
class StudyResult:
    files: StudyFiles
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    report: Path | None
    stopped_by: str  # "trials", "timeout", "grid", "interrupted", "skipped"


def start_study(
    config_path: Path | None,
    *,
    name: str | None = None,
    overrides: Iterable[str] = (),
    profile: str | None = None,
    trials: int | None = None,
    timeout_minutes: float | None = None,
    sampler: str | None = None,
) -> StudyFiles:
    """Make a new study's folder and `study.json`; `run_study` then runs it."""
    overrides = list(overrides)
    if trials is not None:
        overrides.append(f"tune.trials={trials}")
    if timeout_minutes is not None:
        overrides.append(f"tune.timeout_minutes={timeout_minutes}")
    if sampler is not None:
        overrides.append(f"tune.sampler={sampler}")
    config = load_config(config_path, overrides=overrides, profile=profile)
    tune_space.check_space(config)  # a space ft cannot use is refused before anything runs
    project = Path(config_path).resolve().parent if config_path else Path.cwd()
    name = name or datetime.now(UTC).strftime("study-%Y%m%d-%H%M%S")
    files = StudyFiles(studies_dir(project) / name)
    if files.info.exists():
        raise TuneError(
            f"study {name} exists ({files.dir}): `ft tune --resume {name}` continues it, or "
            "pick another --name"
        )
    files.dir.mkdir(parents=True, exist_ok=True)
    info = {
        "name": name,
        "project": str(project),
        "config_path": str(Path(config_path).resolve()) if config_path else None,
        "overrides": overrides,
        "profile": profile,
        "seed": config.training.seed,
        "created_at": time.time(),
    }
    atomic_write_text(files.info, json.dumps(info, indent=2) + "\n")
    return files


def run_study(
    files: StudyFiles,
    *,
    trials: int | None = None,
    timeout_minutes: float | None = None,
    say: Say = print,
    on_change: Callable[[list[dict[str, Any]]], None] | None = None,
    store: JobStore | None = None,
    enqueue: Iterable[dict[str, Any]] = (),
    train: Callable[..., Any] | None = None,
) -> StudyResult:
    """Run (or continue) the study in `files` until `tune.trials` trials have finished, the
    timeout passes, or a grid is exhausted; then keep the best adapters and write the report.
    `trials`/`timeout_minutes` override the study's own for this call. `enqueue`: settings
    ({dotted: value}) to try first. `on_change` gets the trials' rows whenever one changes
    (the live table)."""
    from ft_runs import training as training_module
    from ft_train_core.plan import PlanRefused

    optuna = _optuna()
    train = train or training_module.train
    info = json.loads(files.info.read_text(encoding="utf-8"))
    config_path = Path(info["config_path"]) if info.get("config_path") else None
    base = list(info.get("overrides", []))
    extra = []
    if trials is not None:
        extra.append(f"tune.trials={trials}")
    if timeout_minutes is not None:
        extra.append(f"tune.timeout_minutes={timeout_minutes}")
    config = load_config(config_path, overrides=[*base, *extra], profile=info.get("profile"))
    tune = config.tune
    parameters = tune_space.parse_space(tune.search_space)
    store = store or JobStore()
    study = open_study(files, tune, int(info.get("seed", 0)))
    for settings in enqueue:
        study.enqueue_trial(
            {k: tune_space._label(v) for k, v in settings.items() if _is_searched(k, parameters)}
        )
    recover_dead_trials(study, store, tune.max_retries, say)
    if config.data.validation is None and not config.data.validation_split:
        raise TuneError(
            f"ft tune compares trials on their validation {tune.metric}: set data.validation "
            "or data.validation_split in train.yml"
        )
    # Pruning judges evaluations: without `eval_every` a run evaluates once, at its end.
    eval_every = []
    if tune.pruning and config.training.eval_every is None and config.training.max_steps:
        eval_every = [f"training.eval_every={max(1, config.training.max_steps // 4)}"]

    deadline = (
        time.monotonic() + tune.timeout_minutes * 60 if tune.timeout_minutes is not None else None
    )
    live: dict[int, TrialMonitor] = {}

    def changed() -> None:
        if on_change is not None:
            on_change(trial_rows(study, store, files, live))

    stopped_by, skipped_in_a_row = "trials", 0
    changed()
    while len(finished(study)) < tune.trials:
        if deadline is not None and time.monotonic() >= deadline:
            stopped_by = "timeout"
            say(f"timeout: {tune.timeout_minutes:g} minutes passed; no new trial starts")
            break
        if tune.sampler == "grid" and study.sampler.is_exhausted(study):
            stopped_by = "grid"
            say("every combination of the grid has been tried")
            break
        trial = study.ask()
        settings = tune_space.suggest(trial, parameters)
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        run_name = f"{files.name}-t{trial.number:03d}"
        store.record_trial(files.dir, files.name, trial.number, state="RUNNING", params=settings)
        monitor = TrialMonitor(trial, tune.metric, tune.pruning, changed)
        live[trial.number] = monitor
        linking = _LinkingStore(store.path)

        def link(run_id: str, trial: Any = trial) -> None:
            trial.set_user_attr("run_id", run_id)
            store.record_trial(files.dir, files.name, trial.number, run_id=run_id)

        linking.link = link  # type: ignore[method-assign]
        changed()
        say(f"trial {trial.number}: {short_settings(settings)}")
        try:
            outcome = train(
                config_path,
                overrides=[
                    *base,
                    *tune_space.overrides(settings),
                    *eval_every,
                    f"output.run_name={run_name}",
                ],
                profile=info.get("profile"),
                say=lambda text: None,
                display=monitor,
                store=linking,
                should_stop=monitor.should_stop,
            )
        except PlanRefused as exc:
            # The memory guard: the estimate says these settings cannot fit. Nothing ran.
            trial.set_user_attr("skipped", str(exc).splitlines()[0])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            store.record_trial(files.dir, files.name, trial.number, state="SKIPPED", note=str(exc))
            say(f"trial {trial.number}: skipped, it cannot fit: {str(exc).splitlines()[0]}")
            live.pop(trial.number, None)
            skipped_in_a_row += 1
            if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                stopped_by = "skipped"
                say(f"{skipped_in_a_row} trials in a row could not fit: the study stops")
                break
            continue
        except BaseException as exc:
            trial.set_user_attr("failed", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            store.record_trial(files.dir, files.name, trial.number, state="FAIL", note=str(exc))
            live.pop(trial.number, None)
            changed()
            raise
        finally:
            linking.close()
        skipped_in_a_row = 0
        live.pop(trial.number, None)
        run = store.get_run(outcome.run_id)
        if monitor.pruned_at is not None:
            store.finish_run(outcome.run_id, "stopped", reason="pruned")
            trial.set_user_attr("pruned_at", monitor.pruned_at)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state, value = "PRUNED", monitor.last
            say(f"trial {trial.number}: pruned at step {monitor.pruned_at}")
        elif outcome.status == "completed":
            value = _metric(tune.metric, run, store)
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise TuneError(
                    f"run {outcome.run_id} reported no {tune.metric}: set tune.metric to one "
                    "of its evaluation's metrics (eval_loss, perplexity, accuracy)"
                )
            study.tell(trial, value)
            state = "COMPLETE"
            say(f"trial {trial.number}: {tune.metric} {value:.4f} (run {outcome.run_id})")
        elif outcome.status == "interrupted":
            # Ctrl-C (or the memory watchdog): the trial counts as not run; --resume retries it.
            trial.set_user_attr("failed", f"interrupted ({outcome.result.reason})")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            store.record_trial(files.dir, files.name, trial.number, state="FAIL")
            from optuna.storages import RetryHeartbeatStaleTrialCallback

            RetryHeartbeatStaleTrialCallback(max_retry=tune.max_retries)(
                study, study.trials[trial.number]
            )
            stopped_by = "interrupted"
            say(f"trial {trial.number}: interrupted; `ft tune --resume {files.name}` retries it")
            break
        else:
            trial.set_user_attr("failed", f"run {outcome.status} ({outcome.result.reason})")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            state, value = "FAIL", None
        store.record_trial(
            files.dir,
            files.name,
            trial.number,
            state=state,
            value=value,
            pruned_at=monitor.pruned_at,
        )
        keep_best_adapters(study, store, files, tune.keep_adapters, tune.direction)
        changed()
    report = None
    if finished(study):
        from ft_runs.tune_report import write_report

        report = write_report(study, store, files, tune)
    rows = trial_rows(study, store, files, {})
    return StudyResult(files, rows, best_trial(rows, tune.direction), report, stopped_by)


def _is_searched(name: str, parameters: list[tune_space.Parameter]) -> bool:
    return any(p.name == name and p.kind != "derived" for p in parameters)


def short_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in settings.items())


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "attention" if value == tune_space.ATTENTION else "+".join(map(str, value))
    return str(value)


def _metric(metric: str, run: Any, store: JobStore) -> float | None:
    if metric == "eval_loss" and run.best_eval_loss is not None:
        return float(run.best_eval_loss)
    values = [m[metric] for m in store.metrics(run.id, "eval") if m.get(metric) is not None]
    return float(values[-1]) if values else None


def trial_rows(
    study: Any, store: JobStore, files: StudyFiles, live: dict[int, TrialMonitor]
) -> list[dict[str, Any]]:
    """One dict per trial (the live table, the server, the report): `number`, `state`,
    `settings`, `value`, `pruned_at`, `run_id`, `step`, `total_steps`, `note`,
    `adapter_kept`."""
    linked = {row["trial"]: row for row in store.trials(files.dir)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = linked.get(t.number, {})
        monitor = live.get(t.number)
        state = t.state.name
        if t.user_attrs.get("skipped"):
            state = "SKIPPED"
        rows.append(
            {
                "number": t.number,
                "state": state,
                "settings": t.user_attrs.get("settings") or {},
                "value": _value(t, monitor),
                "pruned_at": t.user_attrs.get("pruned_at"),
                "run_id": t.user_attrs.get("run_id") or row.get("run_id"),
                "step": monitor.step if monitor else None,
                "total_steps": monitor.total_steps if monitor else None,
                "note": t.user_attrs.get("skipped") or t.user_attrs.get("failed"),
                "retry_of": t.system_attrs.get("failed_trial"),
                "adapter_kept": bool(row.get("adapter_kept", 1)) if state == "COMPLETE" else False,
            }
        )
    return rows


def _value(trial: Any, monitor: TrialMonitor | None) -> float | None:
    """A trial's metric: its final value; while it runs, its last evaluation's; once pruned,
    the evaluation it was pruned at (what `run_study` records in the job store)."""
    if trial.value is not None:
        return float(trial.value)
    if monitor is not None:
        return monitor.last
    reported = trial.intermediate_values
    if trial.state.name == "PRUNED" and reported:
        return float(reported[max(reported)])
    return None


def best_trial(rows: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done:
        return None
    pick = min if direction == "minimize" else max
    return pick(done, key=lambda r: r["value"])


def keep_best_adapters(
    study: Any, store: JobStore, files: StudyFiles, keep: int, direction: str
) -> None:
    """Delete the adapters and checkpoints of every trial but the `keep` best completed ones
    (pruned and failed trials keep none); their config, metrics and records stay."""
    rows = trial_rows(study, store, files, {})
    done = sorted(
        (r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None),
        key=lambda r: r["value"],
        reverse=direction == "maximize",
    )
    kept = {r["number"] for r in done[:keep]}
    for row in rows:
        if row["number"] in kept or not row["run_id"] or row["state"] == "RUNNING":
            continue
        try:
            run = store.get_run(row["run_id"])
        except RunNotFound:
            continue
        folder = Path(run.run_dir)
        removed = False
        for part in ("adapter", "checkpoints"):
            if (folder / part).exists():
                shutil.rmtree(folder / part, ignore_errors=True)
                removed = True
        if removed or run.adapter_path or run.best_checkpoint:
            store.update_run(run.id, adapter_path=None, best_checkpoint=None)
        store.record_trial(files.dir, files.name, row["number"], adapter_kept=0)


def study_status(files: StudyFiles, store: JobStore | None = None) -> dict[str, Any]:
    """Where a study stands (for the server and scripts): its name, folder, the trials it runs
    to, the metric and its direction, how many finished, its trials' rows by state, and the
    best so far."""
    info = json.loads(files.info.read_text(encoding="utf-8"))
    config_path = Path(info["config_path"]) if info.get("config_path") else None
    config = load_config(
        config_path, overrides=info.get("overrides", []), profile=info.get("profile")
    )
    store = store or JobStore()
    counts: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    if files.journal.exists():
        rows = trial_rows(
            open_study(files, config.tune, int(info.get("seed", 0))), store, files, {}
        )
    for row in rows:
        counts[row["state"].lower()] = counts.get(row["state"].lower(), 0) + 1
    return {
        "name": files.name,
        "dir": str(files.dir),
        "trials": config.tune.trials,
        "metric": config.tune.metric,
        "direction": config.tune.direction,
        "finished": sum(1 for r in rows if r["state"] in FINISHED_STATES),
        "states": counts,
        "best": best_trial(rows, config.tune.direction),
        "report": str(files.report) if files.report.exists() else None,
        "rows": rows,
    }
