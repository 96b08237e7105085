"""What `ft train` shows while it works: a progress bar with loss, its trend, tokens/s and ETA.

The display is just another event sink (see ft_train_core.protocol): it reads the same events the
run folder records, so what a user sees is what is stored.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

SPARK = "▁▂▃▄▅▆▇█"
SAMPLE_WIDTH = 100
"""The most characters of an evaluation sample `ft train` prints (the dashboard shows it whole)."""


def one_line(text: str, width: int) -> str:
    """`text` with its whitespace runs (newlines included) made single spaces, cut to `width`
    characters with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def sparkline(values: list[float], width: int = 24) -> str:
    """The trend of `values` in `width` block characters (the last `width` buckets, averaged)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:
        # Average consecutive values into `width` buckets so the line keeps the whole history.
        size = len(finite) / width
        finite = [
            sum(bucket) / len(bucket)
            for i in range(width)
            if (bucket := finite[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)])
        ]
    low, high = min(finite), max(finite)
    span = high - low
    if span <= 0:
        return SPARK[3] * len(finite)
    return "".join(
        SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))] for v in finite
    )


class TrainDisplay:
    """An event sink that draws the training progress in the terminal."""

    def __init__(
        self,
        console: Console | None = None,
        history: int = 500,
        preparing: PrepareProgress | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        # Data preparation's spinner ends where training starts: one live display at a time,
        # or rich nests the bar in the spinner's region and leaves blank lines when both stop.
        self.preparing = preparing
        self.losses: deque[float] = deque(maxlen=history)
        # Piped or captured output gets no live bar (rich would print a blank line for each
        # stop), only the finished bar's line at the end.
        self.live = self.console.is_interactive
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(bar_width=28),
            TaskProgressColumn(),
            TextColumn("loss [bold]{task.fields[loss]}[/] {task.fields[trend]}"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.live,
        )
        self.task: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":
            if self.preparing is not None:
                self.preparing.stop()
            resumed = event.get("resumed_from_step") or 0
            self.console.print(
                f"training on [bold]{event.get('device')}[/] ({event.get('dtype')}): "
                f"{event.get('trainable_params', 0):,} of {event.get('total_params', 0):,} parameters trainable"
                + (f", resuming from step {resumed}" if resumed else "")
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train",
                total=event.get("total_steps"),
                completed=resumed,
                loss="-",
                trend="",
                lr="-",
                speed="-",
            )
        elif kind == "step" and self.task is not None:
            loss = float(event.get("loss", math.nan))
            self.losses.append(loss)
            self.progress.update(
                self.task,
                completed=event["step"],
                loss=f"{loss:.4f}",
                trend=sparkline(list(self.losses)),
                lr=f"{event.get('learning_rate', 0):.1e}",
                speed=f"{event.get('tokens_per_s', 0):,.0f}",
            )
        elif kind == "eval":
            best = " [green](best)[/]" if event.get("is_best") else ""
            figure = (
                f"accuracy {event['accuracy']:.3f}"
                if event.get("accuracy") is not None
                else f"perplexity {event.get('perplexity', math.nan):.2f}"
            )
            self.progress.console.print(
                f"  eval at step {event['step']}: loss {event['eval_loss']:.4f}, {figure}{best}"
            )
        elif kind == "samples":
            # The model's answers at this evaluation (training.eval_samples), one line each:
            # model text, printed as text (never as rich markup), on one line.
            for sample in event.get("samples") or []:
                self.progress.console.print(
                    f"    answer: {escape(one_line(sample.get('output', ''), SAMPLE_WIDTH))}",
                    highlight=False,
                )
        elif kind == "message":
            style = {"warning": "yellow", "error": "red"}.get(event.get("level", "info"), "")
            text = escape(event.get("text", ""))  # plain text, brackets included
            self.progress.console.print(f"  [{style}]{text}[/]" if style else f"  {text}")
        elif kind == "end":
            if not self.live and self.task is not None:
                self.console.print(self.progress.get_renderable())
            self.progress.stop()


class PrepareProgress:
    """A `progress(role, rows)` callback for data preparation: one spinner line per dataset
    with the rows read so far (the total is unknown while streaming)."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.progress import SpinnerColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("preparing {task.description} data: {task.completed:,} rows"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_interactive,  # a spinner means nothing in a log
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, role: str, rows: int) -> None:
        if role not in self.tasks:
            self.progress.start()
            self.tasks[role] = self.progress.add_task(role, total=None)
        self.progress.update(self.tasks[role], completed=rows)

    def stop(self) -> None:
        self.progress.stop()
