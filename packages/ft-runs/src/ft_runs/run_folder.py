"""A run folder: everything one training run produced, readable without ft's database.

```
runs/20261125-203015-smollm2-135m-lora/
  config.yml        the resolved config (profile, file and --set merged)
  run.json          id, config commit, model and data it used, versions, host
  metrics.jsonl     one event per line (step, eval, checkpoint, ...)
  checkpoints/      step-00000100/ ... (complete or absent: see ft_models.checkpoint)
  best.json         which checkpoint is the best, and its validation loss
  adapter/          the final adapter in PEFT's layout (or the full model)
  tensorboard/      TensorBoard event files
  exports/          what `ft export` wrote
```
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from ft_config import TrainConfig, atomic_write_text, dump_config


def new_run_id(
    config: TrainConfig,
    runs_dir: Path,
    *,
    now: datetime | None = None,
    taken: Callable[[str], bool] = lambda _: False,
) -> str:
    """`20261125-203015-smollm2-135m-lora`, or `output.run_name`; a suffix keeps it unique
    among the folders in `runs_dir` and the ids `taken` says are in use (the job store's runs
    whose folders still exist)."""
    if config.output.run_name:
        base = config.output.run_name
    else:
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
        model = (
            re.sub(r"[^A-Za-z0-9.]+", "-", Path(config.model.name.split("@")[0]).name)
            .strip("-")
            .lower()
        )
        base = f"{stamp}-{model}-{config.method.name}"
    candidate, n = base, 2
    while (runs_dir / candidate).exists() or taken(candidate):
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def git_commit_of(path: Path) -> tuple[str | None, bool]:
    """The commit of the repository holding `path`, and whether `path` differs from it."""
    folder = path.parent if path.is_file() or not path.exists() else path
    head = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return None, False
    status = subprocess.run(
        ["git", "-C", str(folder), "status", "--porcelain", "--", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip(), bool(status.stdout.strip())


def ft_versions() -> dict[str, str]:
    """Versions of ft's packages and the libraries that decide numerics."""
    names = [
        "ft-config",
        "ft-data",
        "ft-models",
        "ft-runs",
        "ft-train-torch",
        "ft-train-mlx",
        "torch",
        "transformers",
        "peft",
        "mlx",
        "mlx-lm",
    ]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@attrs.frozen
class RunFolder:
    """Paths inside a run folder, and the few writes that go there directly."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yml"

    @property
    def info_file(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_file(self) -> Path:
        return self.path / "best.json"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def exports(self) -> Path:
        return self.path / "exports"

    def create(self, config: TrainConfig, info: dict[str, Any]) -> RunFolder:
        """Make the folder with its config snapshot and run.json (fails if it exists)."""
        self.path.mkdir(parents=True)
        self.checkpoints.mkdir()
        atomic_write_text(self.config_file, dump_config(config))
        info = {
            "id": self.id,
            "created": datetime.now(UTC).isoformat(),
            "host": platform.node(),
            "python": platform.python_version(),
            "versions": ft_versions(),
            **info,
        }
        atomic_write_text(self.info_file, json.dumps(info, indent=2, default=str) + "\n")
        return self

    def info(self) -> dict[str, Any]:
        return json.loads(self.info_file.read_text(encoding="utf-8"))

    def settings(self) -> dict[str, Any]:
        """The run's config snapshot as a mapping (empty when it is missing or unreadable)."""
        import yaml

        try:
            data = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def task_of(settings: dict[str, Any]) -> str:
        """What a run with these `settings` trained: `causal-lm` (a language model, the
        default) or `sequence-classification`."""
        return str((settings.get("model") or {}).get("task") or "causal-lm")

    def update_info(self, **fields: Any) -> None:
        atomic_write_text(
            self.info_file, json.dumps({**self.info(), **fields}, indent=2, default=str) + "\n"
        )

    def append_event(self, event: dict[str, Any]) -> None:
        """Append one event as a JSON line (flushed, so a crash loses at most the line being written)."""
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """The events recorded so far; a torn last line (from a kill) is ignored."""
        if not self.metrics_file.exists():
            return []
        found = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if type is None or event.get("type") == type:
                found.append(event)
        return found

    def forget_after(self, step: int) -> dict[str, Any] | None:
        """Drop the events after `step` from metrics.jsonl (and a torn last line), and point
        best.json at the best checkpoint as of `step`: what a run resumed from `step` records
        before it trains the later steps again, so they are replaced, not repeated. Returns
        best.json as it is then (None when there is no best checkpoint yet)."""
        kept: list[dict[str, Any]] = []
        if self.metrics_file.exists():
            for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn by a kill: appending after it would tear the next line too
                if not isinstance(event, dict):
                    continue
                at = event.get("step")
                if isinstance(at, int | float) and at > step:
                    continue
                kept.append(event)
            atomic_write_text(
                self.metrics_file, "".join(json.dumps(e, default=str) + "\n" for e in kept)
            )
        best = self.best()
        if best is None or int(best.get("step", 0)) <= step:
            return best
        # best.json named a checkpoint after `step`: the best as of `step` is the last one
        # the events marked best by then.
        marked = [e for e in kept if e.get("type") == "checkpoint" and e.get("is_best")]
        if not marked:
            self.best_file.unlink(missing_ok=True)
            return None
        last = marked[-1]
        losses = [e.get("eval_loss") for e in kept if e.get("type") == "eval"]
        evals = {e.get("step"): e.get("eval_loss") for e in kept if e.get("type") == "eval"}
        loss = evals.get(last["step"], losses[-1] if losses else None)
        # By name: the events hold absolute paths, and the folder may have moved since.
        self.set_best(int(last["step"]), self.checkpoints / Path(last["path"]).name, loss)
        return self.best()

    def set_best(self, step: int, checkpoint: Path, eval_loss: float | None) -> None:
        atomic_write_text(
            self.best_file,
            json.dumps(
                {
                    "step": step,
                    "checkpoint": str(checkpoint.relative_to(self.path)),
                    "eval_loss": eval_loss,
                }
            )
            + "\n",
        )

    def best(self) -> dict[str, Any] | None:
        if not self.best_file.exists():
            return None
        return json.loads(self.best_file.read_text(encoding="utf-8"))

    def checkpoint(self, which: str | int = "last") -> Path:
        """A checkpoint folder: `best`, `last` (newest valid), or a step number."""
        from ft_models.checkpoint import latest_valid_checkpoint, step_folder

        text = str(which).strip().lower()
        if text == "best":
            best = self.best()
            if best is None:
                raise RunNotFoundError(
                    f"run {self.id} has no best checkpoint yet (no evaluation ran); "
                    "use --checkpoint last"
                )
            return self.path / best["checkpoint"]
        if text in ("last", "latest"):
            found = latest_valid_checkpoint(self.checkpoints)
            if found is None:
                raise RunNotFoundError(
                    f"run {self.id} has no complete checkpoint in {self.checkpoints}"
                )
            return found[0]
        if not text.isdigit():
            raise RunNotFoundError(
                f"--checkpoint must be best, last or a step number, not {which!r}"
            )
        folder = step_folder(self.checkpoints, int(text))
        if not folder.is_dir():
            steps = sorted(p.name for p in self.checkpoints.glob("step-*"))
            raise RunNotFoundError(
                f"run {self.id} has no checkpoint at step {int(text)}; it has: {', '.join(steps) or 'none'}"
            )
        return folder


class RunNotFoundError(LookupError):
    """A run or checkpoint the user named does not exist."""


def find_run(ref: str | Path, store: Any = None) -> RunFolder:
    """A run by folder path, by id or unique id prefix in the job store, or `last`: the newest
    run of the project in the working directory (a run folder below it), else the newest run
    of all."""
    path = Path(ref).expanduser()
    if (path / "run.json").is_file():
        return RunFolder(path.resolve())
    from ft_runs.store import JobStore, RunNotFound

    store = store or JobStore()
    if str(ref) in ("last", "latest"):
        return RunFolder(Path(_latest(store.list_runs()).run_dir))
    try:
        record = store.get_run(str(ref))
    except RunNotFound as exc:
        raise RunNotFoundError(str(exc)) from None
    return RunFolder(Path(record.run_dir))


def _latest(records: list[Any], here: Path | None = None) -> Any:
    """The newest of `records` (newest first) whose folder is below `here` (the working
    directory), else the newest of all: `last` in a project means that project's last run."""
    if not records:
        raise RunNotFoundError("no runs yet: `ft train` starts one")
    here = (here or Path.cwd()).resolve()
    for record in records:
        if Path(record.run_dir).resolve().is_relative_to(here):
            return record
    return records[0]
