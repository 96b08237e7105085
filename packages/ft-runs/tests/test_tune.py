"""`ft tune` (ft_runs.tune): studies of real training runs on the tiny Llama, both backends.

What a user relies on: a trial that falls behind is stopped early (pruned) through the trainer's
own stop; a study SIGKILLed mid-trial resumes to the number of finished trials asked for, the
killed trial retried once and nothing counted twice; the best trial trained again with its
settings and seed gives the same metric; `promote` makes it the project's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ft_config import load_config
from ft_runs import tune, tune_promote, tune_space
from ft_runs.store import JobStore
from ft_runs.training import train

GOOD, ALSO_GOOD, HOPELESS = 3e-3, 1e-3, 1e-7


def write_project(
    root: Path,
    model: Path,
    rows: list[dict[str, str]],
    backend: str,
    trials: int = 3,
    **tune_extra: Any,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in tune_extra.items())
    (root / "train.yml").write_text(
        "# the project's job: ft tune promote keeps this line\n"
        f"model: {model}\n"
        "data: {train: data.jsonl, max_seq_length: 48, validation_split: 0.25}\n"
        "method: {name: lora, rank: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n"
        f"training: {{backend: {backend}, max_steps: 3, eval_every: 1, batch_size: 4,"
        " precision: fp32, seed: 0, lr_scheduler: constant}\n"
        "logging: {tensorboard: false}\n"
        "resources: {device: cpu, num_threads: 1}\n"
        "tune:\n"
        f"  trials: {trials}\n"
        "  keep_adapters: 1\n"
        "  search_space:\n"
        f"    training.learning_rate: {{choices: [{GOOD}, {ALSO_GOOD}, {HOPELESS}]}}\n" + extra,
        "utf-8",
    )
    return root / "train.yml"


# --- the search space ---------------------------------------------------------------------------


def test_default_space_ties_alpha_to_rank_unless_rslora() -> None:
    import optuna

    parameters = tune_space.parse_space({})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    drawn = [tune_space.suggest(study.ask(), parameters) for _ in range(40)]
    for settings in drawn:
        assert 3e-5 <= settings["training.learning_rate"] <= 5e-4
        assert settings["method.rank"] in (8, 16, 32, 64)
        if settings["method.rslora"]:
            assert "method.alpha" not in settings  # train.yml's alpha, over sqrt(r)
        else:
            assert settings["method.alpha"] == 2 * settings["method.rank"]
        assert settings["method.target_modules"] in (tune_space.ATTENTION, "all-linear")
    assert {s["method.rslora"] for s in drawn} == {False, True}
    one = {
        "training.learning_rate": 1e-4,
        "method.target_modules": ["q_proj", "v_proj"],
        "method.rslora": False,
    }
    assert tune_space.overrides(one) == [
        "training.learning_rate=0.0001",
        "method.target_modules=[q_proj, v_proj]",
        "method.rslora=false",
    ]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"method.alpha": {"same_as": "method.rank"}},
            "tune.search_space.method.alpha.same_as: 'method.rank' is not a parameter above this one",
        ),
        (
            {"training.learning_rate": {"low": 1e-3, "high": 1e-5}},
            "tune.search_space.training.learning_rate: `low` (0.001) must be below `high` (1e-05)",
        ),
        (
            {"method.rank": {"choice": [8]}},
            "tune.search_space.method.rank: unknown key 'choice'; an entry takes choices, high, "
            "int, log, low, same_as, step, times, when",
        ),
    ],
)
def test_a_bad_search_space_entry_says_which_and_what_to_write(
    space: dict[str, Any], message: str
) -> None:
    with pytest.raises(tune_space.SearchSpaceError) as caught:
        tune_space.parse_space(space)
    assert str(caught.value) == message


def test_grid_refuses_what_it_cannot_enumerate() -> None:
    parameters = tune_space.parse_space(
        {"method.rslora": {"choices": [False, True]}, "method.rank": {"low": 4, "high": 8}}
    )
    with pytest.raises(
        tune_space.SearchSpaceError, match=re.escape("method.rank: a range needs `step`")
    ):
        tune_space.grid(parameters)
    space = tune_space.grid(
        tune_space.parse_space({"method.rank": {"low": 4, "high": 8, "step": 2, "int": True}})
    )
    assert space == {"method.rank": [4, 6, 8]}
    # A range of a billion values is a forgotten step, not a grid (nor a list to build).
    huge = tune_space.parse_space({"training.max_steps": {"low": 1, "high": 10**9, "int": True}})
    with pytest.raises(tune_space.SearchSpaceError) as caught:
        tune_space.grid(huge)
    assert str(caught.value) == (
        "tune.search_space.training.max_steps: 1,000,000,000 values are too many for "
        "`sampler: grid` (at most 10,000 a setting); give a larger `step` or `choices`"
    )
    with pytest.raises(tune_space.SearchSpaceError) as caught:
        tune_space.parse_space({"training.warmup_ratio": {"low": 0, "high": 0.1, "step": 0}})
    assert str(caught.value) == (
        "tune.search_space.training.warmup_ratio.step: expected a number above 0, got 0"
    )


def test_a_value_its_setting_refuses_is_refused_before_the_study_starts(tmp_path: Path) -> None:
    """check_space (start_study's check) puts each value a space can draw through train.yml's
    own checks: a choice out of bounds, a misspelt word, fractions for a whole number."""
    for space, message in [
        (
            {"method.dropout": {"choices": [0.0, 1.5]}},
            "tune.search_space.method.dropout.choices: 1.5: must be at most 0.9, got 1.5",
        ),
        (
            {"method.rank": {"low": 0, "high": 8, "int": True}},
            "tune.search_space.method.rank.low: 0: must be at least 1, got 0",
        ),
        (
            {"training.max_steps": {"low": 10, "high": 100}},
            "tune.search_space.training.max_steps: the range draws fractions such as 38.65, "
            "which training.max_steps refuses (expected a whole number, got 38.65); add "
            "`int: true` or give `choices`",
        ),
    ]:
        config = tmp_path / "train.yml"
        config.write_text(json.dumps({"tune": {"search_space": space}}))
        with pytest.raises(tune_space.SearchSpaceError) as caught:
            tune.start_study(config, name="refused")
        assert str(caught.value) == message
        assert not (tmp_path / "tune" / "refused").exists()
    fine = {
        "training.max_steps": {"low": 10, "high": 100, "int": True},
        "method.target_modules": {"choices": [["q_proj", "v_proj"], "all-linear"]},
    }
    parsed = tune_space.check_space(
        load_config(None, overrides=[f"tune.search_space={json.dumps(fine)}"])
    )
    assert [p.name for p in parsed] == list(fine)


# --- studies of real runs --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_pruning_stops_a_trial_early_and_the_best_trial_reproduces(
    backend: str, tmp_path: Path, tiny_llama: Path, alpaca_short_rows: list[dict[str, str]]
) -> None:
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    config = write_project(tmp_path / "project", tiny_llama, alpaca_short_rows[:24], backend)
    files = tune.start_study(config, name="lr")
    store = JobStore()
    # In this order: two trials that learn, then one that cannot (the median pruner judges
    # from the third trial on).
    result = tune.run_study(
        files,
        say=lambda text: None,
        store=store,
        enqueue=[{"training.learning_rate": lr} for lr in (GOOD, ALSO_GOOD, HOPELESS)],
    )
    states = [(r["number"], r["state"]) for r in result.trials]
    assert states == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]
    # Stopped at an evaluation before its last step (3), through the trainer's own stop.
    pruned_at = result.trials[2]["pruned_at"]
    assert pruned_at in (1, 2)
    pruned = store.get_run(result.trials[2]["run_id"])
    assert (pruned.status, pruned.reason, pruned.step) == ("stopped", "pruned", pruned_at)
    assert result.best is not None and result.best["number"] == 0
    # Only the best trial keeps its adapter (keep_adapters: 1).
    kept = {
        r["number"]: (Path(store.get_run(r["run_id"]).run_dir) / "adapter").is_dir()
        for r in result.trials
    }
    assert kept == {0: True, 1: False, 2: False}
    assert [r["trial"] for r in store.trials(files.dir)] == [0, 1, 2]
    assert store.trial_of_run(result.trials[0]["run_id"])["study"] == "lr"
    report = files.report.read_text("utf-8")
    assert "Best: trial 0" in report and (files.dir / "importances.png").is_file()

    # The best trial again, as a plain `ft train` with its settings: the same metric.
    again = train(
        config, overrides=tune_promote.trial_overrides(files), say=lambda text: None, store=store
    )
    assert store.get_run(again.run_id).best_eval_loss == result.best["value"]


RUN_STUDY = (
    "import sys; from pathlib import Path; from ft_runs import tune; "
    "tune.run_study(tune.StudyFiles(Path(sys.argv[1])), say=lambda text: None)"
)


@pytest.mark.slow
def test_a_study_killed_mid_trial_resumes_to_the_trials_asked_for(
    tmp_path: Path, tiny_llama: Path, alpaca_short_rows: list[dict[str, str]]
) -> None:
    config = write_project(
        tmp_path / "project", tiny_llama, alpaca_short_rows[:24], "torch", 2, pruning=False
    )
    # Long enough trials to be caught in the middle of one.
    text = config.read_text("utf-8").replace("max_steps: 3", "max_steps: 12")
    config.write_text(text.replace("eval_every: 1", "eval_every: 6"), "utf-8")
    files = tune.start_study(config, name="killed")
    store = JobStore()
    # The study's own process: a fresh interpreter. A fork of this test process trained only
    # while nothing before it in the same pytest worker had started autograd's device threads
    # (CI failed it: "Unable to handle autograd's threading in combination with fork-based
    # multiprocessing"); importing torch again costs seconds, and the loop below waits minutes.
    child = subprocess.Popen([sys.executable, "-c", RUN_STUDY, str(files.dir)])
    # SIGKILL once the second trial's run has trained a few steps.
    killed_run = None
    for _ in range(30000):
        if child.poll() is not None:
            break
        runs = {r["trial"]: r["run_id"] for r in store.trials(files.dir) if r["run_id"]}
        if 1 in runs and store.get_run(runs[1]).step >= 2:
            killed_run = runs[1]
            os.kill(child.pid, signal.SIGKILL)
            break
        threading.Event().wait(0.02)
    child.wait()
    assert killed_run is not None and child.returncode == -signal.SIGKILL

    said: list[str] = []
    result = tune.run_study(files, say=said.append, store=store)
    assert said[0] == "trial 1: its process died; queued again with the same settings"
    rows = {r["number"]: r for r in result.trials}
    assert [(n, r["state"]) for n, r in rows.items()] == [
        (0, "COMPLETE"),
        (1, "FAIL"),
        (2, "COMPLETE"),  # trial 1 again
    ]
    assert rows[2]["retry_of"] == 1 and rows[2]["settings"] == rows[1]["settings"]
    assert rows[1]["note"] == "its process died" and rows[1]["run_id"] == killed_run
    assert store.get_run(killed_run).status == "interrupted"
    finished = [r for r in result.trials if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2 and len({r["run_id"] for r in finished}) == 2
    # Every finished trial trained all of its steps once, in a run of its own.
    assert [store.get_run(r["run_id"]).step for r in finished] == [12, 12]


@pytest.mark.slow
def test_promote_writes_the_best_settings_and_commits_them(
    tmp_path: Path, tiny_llama: Path, alpaca_short_rows: list[dict[str, str]]
) -> None:
    project = tmp_path / "project"
    config = write_project(project, tiny_llama, alpaca_short_rows[:24], "torch", trials=2)
    for args in (["init", "-q"], ["add", "train.yml"], ["commit", "-qm", "start"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True
        )
    files = tune.start_study(config, name="p")
    result = tune.run_study(
        files,
        say=lambda text: None,
        enqueue=[{"training.learning_rate": ALSO_GOOD}, {"training.learning_rate": GOOD}],
    )
    assert result.best is not None and result.best["number"] == 1
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    os.environ.update({**env, "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    before = config.read_text("utf-8").splitlines()
    promoted = tune_promote.promote(files, say=lambda text: None)
    assert load_config(config).training.learning_rate == GOOD
    # set in place: the comment and every other line as they were
    after = config.read_text("utf-8").splitlines()
    assert after[0] == "# the project's job: ft tune promote keeps this line"
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed == [
        (
            "training: {backend: torch, max_steps: 3, eval_every: 1, batch_size: 4, "
            "precision: fp32, seed: 0, lr_scheduler: constant}",
            "training: {backend: torch, max_steps: 3, eval_every: 1, batch_size: 4, "
            f"precision: fp32, seed: 0, lr_scheduler: constant, learning_rate: {GOOD}}}",
        )
    ]
    log = subprocess.run(
        ["git", "log", "--format=%s", "-1"], cwd=project, capture_output=True, text=True
    ).stdout
    assert log.startswith("ft tune promote: study p trial 1 (learning_rate=0.003")
    assert promoted.commit is not None
    assert (project / "model" / "adapter_config.json").is_file()
    info = json.loads((project / "model" / "promoted.json").read_text("utf-8"))
    assert (info["study"], info["trial"]) == ("p", 1)


@pytest.mark.slow
def test_settings_the_memory_estimate_refuses_are_skipped_and_do_not_count(
    tmp_path: Path,
    tiny_llama: Path,
    alpaca_short_rows: list[dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What is checked here is the plan's estimate, before anything runs. The trial that fits
    # trains in this process, whose memory also holds what earlier tests in the same pytest
    # worker loaded (3 GB and more), so the run's watchdog, which reads this process's RSS
    # against max_memory_gb, is left out.
    import ft_runs.training

    @contextlib.contextmanager
    def no_watchdog(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield types.SimpleNamespace(soft_reached=False)

    monkeypatch.setattr(ft_runs.training, "memory_guard", no_watchdog)
    config = write_project(tmp_path / "project", tiny_llama, alpaca_short_rows[:16], "torch", 1)
    # The tiny model's plan: about 0.9 GB for 4 rows of 48 tokens (mostly the framework), about
    # 1.2 GB for 512 rows; a process that may use 1.2 GB keeps its plans under 85% of it.
    text = config.read_text("utf-8").replace(
        "num_threads: 1}", "num_threads: 1, max_memory_gb: 1.2}"
    )
    text = text.replace(
        f"training.learning_rate: {{choices: [{GOOD}, {ALSO_GOOD}, {HOPELESS}]}}",
        "training.batch_size: {choices: [4, 512]}",
    )
    config.write_text(text.replace("max_steps: 3", "max_steps: 1"), "utf-8")
    files = tune.start_study(config, name="memory")
    said: list[str] = []
    result = tune.run_study(
        files, say=said.append, enqueue=[{"training.batch_size": 512}, {"training.batch_size": 4}]
    )
    assert [(r["state"], r["settings"]) for r in result.trials] == [
        ("SKIPPED", {"training.batch_size": 512}),
        ("COMPLETE", {"training.batch_size": 4}),
    ]
    assert result.trials[0]["run_id"] is None  # refused before any run folder existed
    assert said[1].startswith(
        "trial 0: skipped, it cannot fit: the run does not fit in memory: a micro-batch of 512 "
        "row(s) of 48 tokens needs about 1.2 GB"
    )


def test_hyperband_prunes_what_falls_behind_at_its_first_evaluation_and_keeps_the_best() -> None:
    """`tune.pruner: hyperband` as a study runs it: each trial's `eval` events go through
    `TrialMonitor` to Optuna's HyperbandPruner (brackets by trial number, so this is exact)."""
    optuna = tune._optuna()
    settings = load_config(None, overrides=["tune.pruner=hyperband"]).tune
    pruner = tune.make_pruner(settings)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    study = optuna.create_study(study_name="hb", direction="minimize", pruner=pruner)

    def trained(losses: list[float]) -> int | None:
        """The step the trial was pruned at, None when it ran to its end."""
        trial = study.ask()
        monitor = tune.TrialMonitor(trial, "eval_loss", True, lambda: None)
        monitor({"type": "start", "total_steps": 45})
        for step, loss in zip(range(5, 50, 5), losses, strict=True):
            monitor({"type": "step", "step": step})
            monitor({"type": "eval", "step": step, "eval_loss": loss})
            if monitor.should_stop():  # the trainer checkpoints and stops here
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return monitor.pruned_at
        study.tell(trial, losses[-1])
        return None

    def curve(start: float) -> list[float]:
        return [start - step / 100 for step in range(5, 50, 5)]

    assert trained(curve(2.0)) is None  # nothing to compare the first trial with
    for offset in (0.01, 0.02, 0.03, 0.04, 0.05):
        trained(curve(2.0 + offset))  # close calls: Hyperband keeps a third of each rung
    # Far behind: stopped at the first evaluation, whichever bracket the trial falls in.
    assert [trained([5.0] * 9) for _ in range(4)] == [5, 5, 5, 5]
    # Better than every trial so far: never stopped.
    assert trained(curve(1.5)) is None
    assert study.best_value == curve(1.5)[-1]
    from ft_config import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_config(None, overrides=["tune.pruner=asha"])
    assert str(refused.value) == (
        "--set tune.pruner=asha: tune.pruner: expected one of 'median', 'hyperband', got 'asha'"
    )
