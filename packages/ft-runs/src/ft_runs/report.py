"""Run reports: one PNG with the curves of a run, and an HTML page around it.

The curves come from the run folder's `metrics.jsonl` (what the trainer emitted, the same
events the job store holds): training and validation loss, learning rate, tokens/s and memory
over the steps. The page adds the config highlights, the data summary, the best and last
metrics and the latest evaluation with its sample generations (from `evaluations/`).

    write_report(RunFolder(path)) -> Report(png=..., html=...)

matplotlib draws with its non-interactive Agg backend, so reports work on machines without a
display.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import attrs

from ft_config import atomic_write_bytes, atomic_write_text
from ft_runs.run_folder import RunFolder


@attrs.frozen
class Report:
    png: Path
    html: Path


def run_summary(folder: RunFolder) -> dict[str, Any]:
    """What a report and `ft runs show` say about a run, from its folder alone."""
    info = folder.info() if folder.info_file.exists() else {}
    steps = folder.events("step")
    evals = folder.events("eval")
    ends = folder.events("end")
    starts = folder.events("start")
    speeds = [s["tokens_per_s"] for s in steps[-20:] if _finite(s.get("tokens_per_s"))]
    memory = [s["memory_bytes"] for s in steps if _finite(s.get("memory_bytes"))]
    best = min(
        (e for e in evals if _finite(e.get("eval_loss"))),
        key=lambda e: e["eval_loss"],
        default=None,
    )
    return {
        "id": folder.id,
        "model": info.get("model", {}).get("name"),
        "backend": info.get("backend"),
        "data": info.get("data", {}),
        "start": starts[-1] if starts else {},
        "end": ends[-1] if ends else None,
        "steps": steps[-1]["step"] if steps else 0,
        "last_loss": steps[-1]["loss"] if steps else None,
        "first_loss": steps[0]["loss"] if steps else None,
        "last_eval": evals[-1] if evals else None,
        "best_eval": best,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "peak_memory_bytes": max(memory) if memory else None,
        "train_seconds": steps[-1].get("elapsed_s") if steps else None,
        "tokens": sum(s.get("tokens") or 0 for s in steps),
    }


def plot_run(folder: RunFolder, path: Path) -> Path:
    """Draw the run's curves into the PNG `path` (written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = folder.events("step")
    evals = folder.events("eval")
    x = [s["step"] for s in steps]
    plt.rcParams.update({"font.size": 12, "axes.titlesize": 14, "axes.titleweight": "bold"})
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), dpi=110)
    (loss_ax, lr_ax), (speed_ax, memory_ax) = axes

    loss_ax.plot(
        x,
        [s.get("loss") for s in steps],
        color="#1f77b4",
        linewidth=1.2,
        alpha=0.55,
        label="training loss",
    )
    if len(steps) >= 8:
        window = max(2, len(steps) // 20)
        smooth = _moving_average([s.get("loss") for s in steps], window)
        loss_ax.plot(
            x, smooth, color="#1f77b4", linewidth=2.4, label=f"training loss ({window}-step mean)"
        )
    if evals:
        loss_ax.plot(
            [e["step"] for e in evals], [e.get("eval_loss") for e in evals],
            "o-", color="#d62728", linewidth=2.4, markersize=7, label="validation loss",
        )  # fmt: skip
        best = min(evals, key=lambda e: e.get("eval_loss", math.inf))
        loss_ax.annotate(
            f"best {best['eval_loss']:.3f}", (best["step"], best["eval_loss"]),
            textcoords="offset points", xytext=(8, 10), color="#d62728", fontsize=12,
        )  # fmt: skip
    loss_ax.set_title("Loss")
    loss_ax.legend(loc="upper right")

    lr_ax.plot(x, [s.get("learning_rate") for s in steps], color="#2ca02c", linewidth=2)
    lr_ax.set_title("Learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    speed_ax.plot(x, [s.get("tokens_per_s") for s in steps], color="#9467bd", linewidth=2)
    speed_ax.set_title("Throughput (tokens/s)")
    speed_ax.set_ylim(bottom=0)

    memory = [
        (s["step"], s["memory_bytes"] / 2**30) for s in steps if _finite(s.get("memory_bytes"))
    ]
    if memory:
        memory_ax.plot(*zip(*memory, strict=True), color="#ff7f0e", linewidth=2)
        memory_ax.set_ylim(bottom=0)
    else:
        memory_ax.text(
            0.5,
            0.5,
            "no memory figures recorded",
            ha="center",
            va="center",
            transform=memory_ax.transAxes,
        )
    memory_ax.set_title("Peak memory (GiB)")

    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(top=max(ax.get_ylim()[1], ax.dataLim.y1 * 1.08))
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{folder.id}", fontsize=15)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def latest_evaluation(folder: RunFolder) -> dict[str, Any] | None:
    files = sorted((folder.path / "evaluations").glob("*.json"))
    if not files:
        return None
    return json.loads(files[-1].read_text(encoding="utf-8"))


def write_report(folder: RunFolder, output: Path | None = None) -> Report:
    """Write `report.png` and `report.html` into the run folder (or `output`)."""
    out = Path(output) if output else folder.path
    out.mkdir(parents=True, exist_ok=True)
    png = plot_run(folder, out / "report.png")
    summary = run_summary(folder)
    evaluation = latest_evaluation(folder)
    page = render_html(folder, summary, evaluation, png)
    target = out / "report.html"
    atomic_write_text(target, page)
    return Report(png, target)


def render_html(
    folder: RunFolder, summary: dict[str, Any], evaluation: dict[str, Any] | None, png: Path
) -> str:
    e = html.escape
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    config = folder.config_file.read_text(encoding="utf-8") if folder.config_file.exists() else ""
    data = summary["data"] or {}
    rows = [
        ("model", summary["model"]),
        ("backend", summary["backend"]),
        (
            "data",
            f"{data.get('format', '?')}: {data.get('examples', '?')} examples, {data.get('tokens', '?')} tokens ({data.get('trained_tokens', '?')} trained)",
        ),
        ("steps", summary["steps"]),
        ("loss", _pair(summary["first_loss"], summary["last_loss"], "first", "last")),
        (
            "best validation loss",
            _fmt(summary["best_eval"]["eval_loss"]) + f" at step {summary['best_eval']['step']}"
            if summary["best_eval"]
            else "-",
        ),
        ("tokens/s", _fmt(summary["tokens_per_s"], ".1f")),
        (
            "peak memory",
            f"{summary['peak_memory_bytes'] / 2**30:.2f} GiB"
            if summary["peak_memory_bytes"]
            else "-",
        ),
        ("training time", f"{summary['train_seconds']:.0f} s" if summary["train_seconds"] else "-"),
        ("ended", (summary["end"] or {}).get("reason", "running or killed")),
    ]
    table = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>ft run {e(folder.id)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{padding:.35em .8em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
        "th{color:#555;font-weight:600}img{max-width:100%;border:1px solid #eee}pre{background:#f6f8fa;padding:1em;overflow:auto}"
        ".answers td{white-space:pre-wrap;max-width:30em}</style></head><body>",
        f"<h1>Run {e(folder.id)}</h1>",
        f"<table>{table}</table>",
        f"<img alt='training curves' src='data:image/png;base64,{image}'>",
    ]
    if evaluation:
        metrics = evaluation.get("metrics", {})
        parts.append(f"<h2>Evaluation ({e(str(evaluation.get('checkpoint', '')))})</h2><table>")
        for key, value in metrics.items():
            base = evaluation.get("base_metrics", {}).get(key)
            parts.append(
                f"<tr><th>{e(key)}</th><td>{_fmt(value)}</td><td>{'base ' + _fmt(base) if base is not None else ''}</td></tr>"
            )
        parts.append("</table>")
        samples = evaluation.get("samples", [])
        if samples:
            parts.append(
                "<h2>Sample generations</h2><table class='answers'><tr><th>prompt</th><th>base model</th><th>fine-tuned</th><th>reference</th></tr>"
            )
            for s in samples:
                parts.append(
                    "<tr>"
                    + "".join(
                        f"<td>{e(str(s.get(k) or ''))}</td>"
                        for k in ("prompt", "base", "tuned", "reference")
                    )
                    + "</tr>"
                )
            parts.append("</table>")
    parts.append(f"<h2>Config</h2><pre>{e(config)}</pre></body></html>")
    return "\n".join(parts)


def _moving_average(values: list[Any], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(float(v) if _finite(v) else math.nan)
        acc = acc[-window:]
        finite = [a for a in acc if math.isfinite(a)]
        out.append(sum(finite) / len(finite) if finite else math.nan)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if _finite(value) else "-"


def _pair(a: Any, b: Any, la: str, lb: str) -> str:
    return f"{la} {_fmt(a)}, {lb} {_fmt(b)}"
