"""A study's report: its trials, the best one, which settings mattered (Optuna's parameter
importances), and plots (matplotlib, no display needed): `report.md`, `report.json`,
`importances.png` and `history.png` in the study folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_config import atomic_write_text
from ft_runs.store import JobStore


def importances(study: Any) -> dict[str, float]:
    """Each searched setting's share of the metric's variation over the completed trials
    (fANOVA, Optuna's default); empty with fewer than two completed trials or one setting
    that never varied."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):
        return {}  # e.g. every trial drew the same values: nothing to attribute


def write_report(study: Any, store: JobStore, files: Any, tune: Any) -> Path:
    """Write the report files into the study folder; returns report.md's path."""
    from ft_runs.tune import best_trial, format_value, trial_rows

    rows = trial_rows(study, store, files, {})
    best = best_trial(rows, tune.direction)
    weights = importances(study)
    plots = _plots(study, files.dir, weights)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    lines = [
        f"# Study {files.name}",
        "",
        f"{tune.sampler} sampler, {tune.direction} {tune.metric}, pruning "
        + (tune.pruner if tune.pruning else "off")
        + ". Trials: "
        + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        + ".",
        "",
    ]
    if best is not None:
        lines += [
            f"Best: trial {best['number']}, {tune.metric} {best['value']:.4f}, run "
            f"`{best['run_id']}`.",
            "",
            "```",
            "ft train " + " ".join(f"--set {o}" for o in _overrides(best["settings"])),
            "ft tune promote --study " + files.name,
            "```",
            "",
        ]
    if weights:
        lines += ["## What mattered", "", "| setting | importance |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in weights.items()]
        lines.append("")
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.name})", ""]
    names = sorted({k for r in rows for k in r["settings"]})
    lines += [
        "## Trials",
        "",
        "| # | state | "
        + " | ".join(n.split(".")[-1] for n in names)
        + f" | {tune.metric} | pruned at | run |",
        "| " + " | ".join(["---"] * (len(names) + 5)) + " |",
    ]
    for r in rows:
        value = f"{r['value']:.4f}" if isinstance(r["value"], float) else ""
        cells = [format_value(r["settings"][n]) if n in r["settings"] else "" for n in names]
        lines.append(
            f"| {r['number']} | {r['state'].lower()} | "
            + " | ".join(cells)
            + f" | {value} | {r['pruned_at'] or ''} | {r['run_id'] or ''} |"
        )
    report = files.dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    atomic_write_text(
        files.dir / "report.json",
        json.dumps({"best": best, "importances": weights, "trials": rows}, indent=2, default=str)
        + "\n",
    )
    return report


def _overrides(settings: dict[str, Any]) -> list[str]:
    from ft_runs.tune_space import overrides

    return [f"'{o}'" if " " in o else o for o in overrides(settings)]


def _plots(study: Any, folder: Path, weights: dict[str, float]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt
    import optuna

    written = []
    values = [
        (t.number, t.value)
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    if values:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs, ys = zip(*values, strict=True)
        ax.plot(xs, ys, "o", label="trial")
        best, line = [], None
        for y in ys:
            line = (
                y
                if line is None
                else (min(line, y) if study.direction.name == "MINIMIZE" else max(line, y))
            )
            best.append(line)
        ax.step(xs, best, where="post", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("metric")
        ax.legend()
        fig.tight_layout()
        path = folder / "history.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if weights:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(weights)))
        names = list(weights)[::-1]
        ax.barh(names, [weights[n] for n in names])
        ax.set_xlabel("importance")
        fig.tight_layout()
        path = folder / "importances.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
