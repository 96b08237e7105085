"""Where a trainer's events go: the run's metrics.jsonl, the job store, TensorBoard, W&B.

A trainer emits plain dicts (see `ft_train_core.protocol`); `EventSinks` is the `emit` callable that
fans each one out. A sink that fails (W&B unreachable, say) is reported once and turned off; it
never stops the training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from ft_config import Secret
from ft_runs.run_folder import RunFolder
from ft_runs.store import Heartbeat, JobStore
from ft_train_core.protocol import PREFERENCE_METRICS, Event

log = logging.getLogger(__name__)

Sink = Callable[[Event], None]
_NUMERIC_TRAIN = (
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_s",
    "tokens",
    "memory_bytes",
    "epoch",
    *PREFERENCE_METRICS,
)


# `accuracy`: classification and preference runs; the rewards and margin: preference runs
# (absent keys are left out by `_finite`).
_NUMERIC_EVAL = ("eval_loss", "perplexity", *PREFERENCE_METRICS)


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }


def metric_values(event: Event) -> tuple[str, dict[str, Any]] | None:
    """The job store's metrics row of an event: `("train", values)` for a step,
    `("eval", values)` for an evaluation, `("samples", {"samples": [...]})` for an
    evaluation's samples (their text, what the dashboard shows), else None (live, and when
    `ft runs rebuild` reads metrics.jsonl back)."""
    kind = event.get("type")
    if kind == "step":
        return "train", _finite({k: event.get(k) for k in _NUMERIC_TRAIN})
    if kind == "eval":
        return "eval", _finite({k: event.get(k) for k in _NUMERIC_EVAL})
    if kind == "samples":
        return "samples", {"samples": [_sample(s) for s in event.get("samples") or []]}
    return None


def _sample(sample: Any) -> dict[str, Any]:
    """One sample's fields (`ft_train_core.protocol.Sample`) as stored: text as text."""
    sample = sample if isinstance(sample, dict) else {}
    return {
        "prompt": str(sample.get("prompt", "")),
        "output": str(sample.get("output", "")),
        "reference": str(sample.get("reference", "")),
        "output_tokens": int(sample.get("output_tokens") or 0),
    }


class StoreSink:
    """Events into the SQLite job store (metrics, checkpoints, run progress)."""

    def __init__(self, store: JobStore, run_id: str, heartbeat: Heartbeat | None = None) -> None:
        self.store, self.run_id, self.heartbeat = store, run_id, heartbeat

    def __call__(self, event: Event) -> None:
        kind = event.get("type")
        row = metric_values(event)
        if row is not None:
            self.store.add_metrics(self.run_id, row[0], event["step"], row[1])
        if kind == "start":
            self.store.update_run(self.run_id, total_steps=event.get("total_steps"))
        elif kind == "step":
            if self.heartbeat is not None:
                self.heartbeat.step = event["step"]
            self.store.update_run(self.run_id, step=event["step"])
        elif kind == "eval":
            if event.get("is_best"):
                self.store.update_run(self.run_id, best_eval_loss=event.get("eval_loss"))
        elif kind == "checkpoint":
            self.store.add_checkpoint(
                self.run_id, event["step"], event["path"], is_best=bool(event.get("is_best"))
            )
            if event.get("is_best"):
                self.store.update_run(self.run_id, best_checkpoint=str(event["path"]))
        elif kind == "end":
            adapter = event.get("adapter_path")
            self.store.update_run(
                self.run_id,
                step=event.get("step", 0),
                adapter_path=str(adapter) if adapter else None,
            )


class TensorBoardSink:
    """Scalars into `tensorboard/` in the run folder (tensorboardX: no TensorFlow, no torch)."""

    def __init__(self, folder: RunFolder) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(folder.tensorboard))

    def __call__(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "step":
            for key, value in _finite(
                {k: event.get(k) for k in _NUMERIC_TRAIN if k != "epoch"}
            ).items():
                self.writer.add_scalar(f"train/{key}", value, event["step"])
        elif kind == "eval":
            for key, value in _finite(
                {
                    "loss": event.get("eval_loss"),
                    "perplexity": event.get("perplexity"),
                    **{key: event.get(key) for key in PREFERENCE_METRICS},
                }
            ).items():
                self.writer.add_scalar(f"eval/{key}", value, event["step"])
        elif kind == "end":
            self.writer.close()
            return
        self.writer.flush()


class WandbSink:
    """Metrics to Weights & Biases; `offline` mode writes locally and needs no network."""

    def __init__(
        self,
        folder: RunFolder,
        *,
        project: str,
        mode: str,
        api_key: Secret | None,
        config: dict[str, Any],
    ) -> None:
        import os

        try:
            import wandb
        except ImportError as exc:
            raise ImportError('W&B logging needs wandb: pip install "ft-runs[wandb]"') from exc
        if mode == "online" and api_key is None:
            raise RuntimeError(
                "logging.wandb is on but no W&B key: set wandb_api_key in passwords.yml or WANDB_API_KEY"
            )
        if api_key is not None:
            os.environ["WANDB_API_KEY"] = (
                api_key.reveal()
            )  # read by wandb itself; never logged by ft
        self.run = wandb.init(
            project=project,
            name=folder.id,
            dir=str(folder.path),
            mode=mode,
            config=config,
            reinit="finish_previous",
        )

    def __call__(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "step":
            self.run.log(
                {
                    f"train/{k}": v
                    for k, v in _finite({k: event.get(k) for k in _NUMERIC_TRAIN}).items()
                },
                step=event["step"],
            )
        elif kind == "eval":
            values = _finite({k: event.get(k) for k in _NUMERIC_EVAL})
            self.run.log(
                {("eval/loss" if k == "eval_loss" else f"eval/{k}"): v for k, v in values.items()},
                step=event["step"],
            )
        elif kind == "end":
            self.run.finish()


class EventSinks:
    """The `emit` a trainer gets: every event to the run folder, then to each sink."""

    def __init__(self, folder: RunFolder, sinks: list[Sink]) -> None:
        self.folder = folder
        self.sinks = list(sinks)
        self.last: dict[str, Event] = {}

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def __call__(self, event: Event) -> None:
        self.last[str(event.get("type"))] = event
        self.folder.append_event(event)
        if event.get("type") == "checkpoint" and event.get("is_best"):
            from pathlib import Path

            self.folder.set_best(
                event["step"], Path(event["path"]), self.last.get("eval", {}).get("eval_loss")
            )
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception as exc:  # a metrics backend must never stop training
                log.warning(
                    "turning off %s after an error: %s",
                    getattr(sink, "__name__", type(sink).__name__),
                    exc,
                )
                self.sinks.remove(sink)


# -- logging.every and logging.level ---------------------------------------------------------------

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def level_of(text: str) -> str:
    """The level of a line `ft train` says: `error:`/`warning:` lines by their prefix, the rest
    info."""
    head = text.lstrip().lower()
    if head.startswith("error"):
        return "error"
    if head.startswith("warning"):
        return "warning"
    return "info"


def at_level(say: Callable[[str], None], level: str) -> Callable[[str], None]:
    """`say`, keeping the lines at `logging.level` or above (`warning`: warnings and errors
    only; `debug` and `info`: everything)."""
    least = LEVELS[level]
    return lambda text: say(text) if LEVELS[level_of(text)] >= least else None


class MessagesAtLevel:
    """A sink that passes on a trainer's `message` events at `logging.level` or above, and
    every other event."""

    def __init__(self, sink: Sink, level: str) -> None:
        self.sink, self.least = sink, LEVELS[level]

    def __call__(self, event: Event) -> None:
        if (
            event.get("type") == "message"
            and LEVELS.get(event.get("level", "info"), 20) < self.least
        ):
            return
        self.sink(event)


class EveryNSteps:
    """A sink that gets `step` events every `every` optimizer steps (`logging.every`, as
    transformers' `logging_steps`), their loss the mean over the steps since the last one it
    got; the first step and every other event pass at once. metrics.jsonl and the job store
    keep every step."""

    def __init__(self, sink: Sink, every: int) -> None:
        self.sink, self.every = sink, max(1, every)
        self.losses: list[float] = []

    def __call__(self, event: Event) -> None:
        if event.get("type") != "step" or self.every == 1:
            self.sink(event)
            return
        self.losses.append(float(event.get("loss", math.nan)))
        step = int(event.get("step", 0))
        if step == 1 or step % self.every == 0:
            mean = sum(self.losses) / len(self.losses)
            self.losses.clear()
            self.sink({**event, "loss": mean})
