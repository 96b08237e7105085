"""The end of a study: a trial trained again (`trial_overrides`, the `ft train --set ...` that
reproduces it) and `promote`: the best trial's settings written into the project's train.yml
(in place, its comments kept: `ft_config.yamledit`; a git commit) and its adapter made the
project's model (`<project>/model/`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import attrs

from ft_config import atomic_write_text, load_config
from ft_runs import tune_space
from ft_runs.store import JobStore
from ft_runs.tune import (
    Say,
    StudyFiles,
    TuneError,
    best_trial,
    open_study,
    short_settings,
    trial_rows,
)


def trial_overrides(files: StudyFiles, number: int | None = None) -> list[str]:
    """The `--set` overrides that train the study's trial `number` (default: the best) again
    from the project's train.yml: the study's own overrides, then the trial's settings (the
    seed is the project's, as the trial's was)."""
    info = json.loads(files.info.read_text(encoding="utf-8"))
    row = _trial(files, number)
    return [*info.get("overrides", []), *tune_space.overrides(row["settings"])]


def _trial(files: StudyFiles, number: int | None) -> dict[str, Any]:
    info = json.loads(files.info.read_text(encoding="utf-8"))
    config_path = Path(info["config_path"]) if info.get("config_path") else None
    config = load_config(
        config_path, overrides=info.get("overrides", []), profile=info.get("profile")
    )
    study = open_study(files, config.tune, int(info.get("seed", 0)))
    rows = trial_rows(study, JobStore(), files, {})
    if number is None:
        best = best_trial(rows, config.tune.direction)
        if best is None:
            raise TuneError(f"study {files.name} has no completed trial yet")
        return best
    for row in rows:
        if row["number"] == number:
            return row
    raise TuneError(f"study {files.name} has no trial {number}")


@attrs.frozen
class Promotion:
    trial: dict[str, Any]
    config_path: Path
    model_dir: Path | None
    commit: str | None


def promote(files: StudyFiles, number: int | None = None, *, say: Say = print) -> Promotion:
    """Make the best trial (or trial `number`) the project's: its settings written into the
    project's train.yml (committed with git when the project is a repository) and its adapter
    copied to `<project>/model/` with `promoted.json` saying where it came from."""
    from ft_config.yamledit import CannotEdit, edited, set_values
    from ft_config.yamlfile import YamlError, dump_yaml, read_yaml

    info = json.loads(files.info.read_text(encoding="utf-8"))
    if not info.get("config_path"):
        raise TuneError("this study ran without a train.yml: there is no file to promote into")
    config_path = Path(info["config_path"])
    row = _trial(files, number)
    original = config_path.read_text(encoding="utf-8")
    try:  # the file as the user wrote it, comments and order kept, the values set in place
        text = set_values(original, row["settings"], str(config_path))
    except (CannotEdit, YamlError) as exc:
        text = dump_yaml(edited(read_yaml(original, str(config_path))[0], row["settings"]))
        say(f"note: {config_path.name} is written whole ({exc}): its comments are not kept")
    load_config_text_check(text, config_path)
    atomic_write_text(config_path, text)
    say(f"{config_path}: trial {row['number']}'s settings ({short_settings(row['settings'])})")
    model_dir = None
    if row.get("run_id"):
        run = JobStore().get_run(row["run_id"])
        adapter = Path(run.run_dir) / "adapter"
        if adapter.is_dir():
            project = Path(info["project"])
            model_dir = project / "model"
            staging = project / ".model.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(adapter, staging)
            (staging / "promoted.json").write_text(
                json.dumps(
                    {
                        "study": files.name,
                        "trial": row["number"],
                        "run_id": run.id,
                        "run_dir": run.run_dir,
                        "base_model": json.loads(run.config_json)["model"]["name"],
                        "value": row["value"],
                        "settings": row["settings"],
                    },
                    indent=2,
                )
                + "\n",
                encoding="utf-8",
            )
            old = project / ".model.old"
            shutil.rmtree(old, ignore_errors=True)
            if model_dir.exists():
                model_dir.rename(old)
            staging.rename(model_dir)
            shutil.rmtree(old, ignore_errors=True)
            say(f"{model_dir}: the adapter of run {run.id}")
    commit = _git_commit(
        config_path,
        f"ft tune promote: study {files.name} trial {row['number']} "
        f"({short_settings(row['settings'])}; value {row['value']})",
        say,
    )
    return Promotion(row, config_path, model_dir, commit)


def load_config_text_check(text: str, config_path: Path) -> None:
    """Refuse to write a train.yml that would not load."""
    probe = config_path.with_name(f".{config_path.name}.promote-check.yml")
    try:
        probe.write_text(text, encoding="utf-8")
        load_config(probe)
    finally:
        probe.unlink(missing_ok=True)


def _git_commit(path: Path, message: str, say: Say) -> str | None:
    import subprocess

    folder = path.parent
    inside = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--is-inside-work-tree"],
        capture_output=True,
        text=True,
    )
    if inside.returncode != 0:
        say(f"note: {folder} is not a git repository: {path.name} changed, nothing committed")
        return None
    subprocess.run(["git", "-C", str(folder), "add", "--", path.name], check=True)
    done = subprocess.run(
        ["git", "-C", str(folder), "commit", "-q", "-m", message, "--", path.name],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        say(f"note: git commit did not run: {done.stderr.strip() or done.stdout.strip()}")
        return None
    head = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    say(f"committed {path.name}: {head[:10]}")
    return head
