"""The bookkeeping of a training loop, the same on every backend.

A trainer's loop does the backend's work (forward, backward, clip, optimizer step); `Steps`
does the rest, so every trainer counts, checkpoints, evaluates, stops and reports alike:

    steps = Steps(state, settings, batches, checkpoints_dir, total_steps=..., ...)
    while steps.running():
        if world.agree(should_stop()):
            return steps.interrupted(checkpoint)
        first, last = steps.window()
        ...                                      # forward, backward, clip
        if steps.non_finite(loss, grad_norm):    # emits the error message
            return steps.finish("nan")
        ...                                      # optimizer step
        steps.stepped(loss=..., learning_rate=..., grad_norm=..., tokens=..., last=last,
                      started=step_started, memory_bytes=...)
        if steps.between_steps(last, evaluate, checkpoint, samples):
            return steps.finish("early_stopping")
    return steps.end(checkpoint)

`checkpoint(is_best)` is the backend's: it gathers what it must on every process and calls
`Steps.save` with a function that writes the weights and state into the checkpoint folder
(on the main process only).

Checkpoints are taken between optimizer steps only, so the saved accumulation micro-step is
always 0 and the data position is `step * accumulation` micro-batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_config import TrainingConfig
from ft_data.batches import Batches
from ft_models.checkpoint import prune_checkpoints, step_folder, write_checkpoint
from ft_train_core import schedule
from ft_train_core.protocol import EndEvent, Sample
from ft_train_core.state import LoopState

Event = dict[str, Any]
# Writes the weights and state into the checkpoint folder being built, given the data position.
WriteFn = Callable[[Path, dict[str, int]], None]


@dataclass(frozen=True)
class Outcome:
    """How a loop ended: `reason` is `completed`, `max_steps`, `early_stopping`,
    `interrupted` or `nan`."""

    reason: str
    step: int
    best_checkpoint: Path | None
    metrics: dict[str, float]

    def end_event(self, adapter: Path | None) -> EndEvent:
        """The run's `end` event, once the final weights are saved (`adapter`)."""
        return {
            "type": "end",
            "step": self.step,
            "reason": self.reason,
            "adapter_path": str(adapter) if adapter else None,
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
        }


@dataclass
class Steps:
    """Counters, checkpoints, evaluation and stopping for one run of a loop; see the module."""

    state: LoopState
    settings: TrainingConfig
    batches: Batches
    checkpoints_dir: Path
    total_steps: int
    total_micro_batches: int | None  # None: `max_steps` decides, the data cycles
    accumulation: int
    say: Callable[[Event], None]  # the main process's event sink; a no-op on the others
    barrier: Callable[[], None] = lambda: None
    saved_at: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._started = time.perf_counter()
        self._elapsed_before = self.state.elapsed_s

    def running(self) -> bool:
        return self.state.step < self.total_steps

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def window(self) -> tuple[int, int]:
        """The micro-batches `[first, last)` of the next optimizer step."""
        first = self.state.step * self.accumulation
        last = first + self.accumulation
        if self.total_micro_batches is not None:
            last = min(last, self.total_micro_batches)
        return first, last

    def position(self) -> dict[str, int]:
        """The data position a checkpoint taken now resumes from."""
        done = self.state.step * self.accumulation
        epoch, index = self.batches.position(done)
        return {
            "epoch": epoch,
            "batch_in_epoch": index,
            "micro_batches_done": done,
            "micro_step": self.state.micro_step,
        }

    def best(self) -> Path | None:
        best = self.state.best_checkpoint
        return self.checkpoints_dir / best if best else None

    def save(self, is_best: bool, write: WriteFn | None) -> Path:
        """Take the checkpoint of the current step: `write` fills the folder (None on the
        processes that do not write), then old checkpoints are pruned (`keep_last`, the best
        kept too), every process waits for the others, and a `checkpoint` event goes out."""
        state = self.state
        folder = step_folder(self.checkpoints_dir, state.step)
        if is_best:
            state.best_checkpoint = folder.name
        state.elapsed_s = self.elapsed()
        if write is not None:
            position = self.position()
            with write_checkpoint(folder, step=state.step, metadata={"is_best": is_best}) as build:
                write(build, position)
            best = self.best()
            keep = (best,) if best is not None else ()
            prune_checkpoints(self.checkpoints_dir, keep_last=self.settings.keep_last, keep=keep)
        self.barrier()
        self.saved_at = state.step
        self.say(
            {"type": "checkpoint", "step": state.step, "path": str(folder), "is_best": is_best}
        )
        return folder

    def ensure_saved(self, checkpoint: Callable[..., Path]) -> None:
        """Checkpoint the current step unless that is done already."""
        if self.saved_at != self.state.step:
            checkpoint()

    def non_finite(self, loss: float, grad_norm: float, *, check_grad_norm: bool = True) -> bool:
        """True (and an error message out) when the step's loss or gradient norm is NaN or
        infinite: the loop then stops before the optimizer step, so the weights and every
        checkpoint stay good."""
        bad_loss = not math.isfinite(loss)
        if not bad_loss and (not check_grad_norm or math.isfinite(grad_norm)):
            return False
        what, value = ("loss", loss) if bad_loss else ("gradient norm", grad_norm)
        where = (
            f"; the last good checkpoint is {step_folder(self.checkpoints_dir, self.saved_at)}"
            if self.saved_at is not None
            else ""
        )
        self.say(
            {
                "type": "message",
                "level": "error",
                "text": f"the {what} is {value} at step {self.state.step + 1}: training "
                f"stopped{where}. Try a lower training.learning_rate or precision: fp32.",
            }
        )
        return True

    def stepped(
        self,
        *,
        loss: float,
        learning_rate: float,
        grad_norm: float,
        tokens: int,
        last: int,
        started: float,
        memory_bytes: int,
        extra: dict[str, float] | None = None,
    ) -> None:
        """Count the optimizer step just taken (ending at micro-batch `last`, begun at
        `time.perf_counter()` value `started`) and emit its `step` event; `extra`: the
        objective's own metrics (a preference run's `PREFERENCE_METRICS`)."""
        self.state.step += 1
        seconds = time.perf_counter() - started
        self.metrics["loss"] = loss
        self.say(
            {
                "type": "step",
                "step": self.state.step,
                "epoch": schedule.epoch_progress(self.batches, last),
                "loss": loss,
                "learning_rate": learning_rate,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
                "elapsed_s": self.elapsed(),
                "memory_bytes": memory_bytes,
                **(extra or {}),
            }
        )

    def between_steps(
        self,
        last: int,
        evaluate: Callable[[], dict[str, float]] | None,
        checkpoint: Callable[[bool], Path],
        samples: Callable[[], list[Sample]] | None = None,
    ) -> bool:
        """After a step ending at micro-batch `last`: evaluate when due (`evaluate` returns
        `eval_loss` and any other scores; None without validation data) and then answer the
        evaluation samples (`samples`, `ft_train_core.samples`: None when there are none, or
        on a process that does not report), checkpoint when due or best, and say whether early
        stopping ends the run."""
        state, settings = self.state, self.settings
        epoch_ended = schedule.epoch_ended(self.batches, last)
        final = state.step >= self.total_steps
        is_best, stop_early = False, False
        if evaluate is not None and (
            schedule.due(settings.eval_every, state.step, epoch_ended) or final
        ):
            scores = evaluate()
            eval_loss = scores["eval_loss"]
            is_best, stop_early = schedule.record_evaluation(state, eval_loss, settings)
            self.metrics.update(scores, perplexity=schedule.perplexity(eval_loss))
            self.say(
                {
                    "type": "eval",
                    "step": state.step,
                    **scores,
                    "perplexity": schedule.perplexity(eval_loss),
                    "is_best": is_best,
                }
            )
            if samples is not None:
                self.say({"type": "samples", "step": state.step, "samples": samples()})
        if (
            schedule.due(settings.save_every, state.step, epoch_ended)
            or is_best
            or final
            or stop_early
        ):
            checkpoint(is_best)
        return stop_early

    def finish(self, reason: str) -> Outcome:
        return Outcome(reason, self.state.step, self.best(), self.metrics)

    def interrupted(self, checkpoint: Callable[..., Path]) -> Outcome:
        """A stop request: checkpoint where the run is, and end."""
        self.ensure_saved(checkpoint)
        return self.finish("interrupted")

    def end(self, checkpoint: Callable[..., Path]) -> Outcome:
        """The plan's steps are done: checkpoint the last one if not yet, and end."""
        self.ensure_saved(checkpoint)
        return self.finish("max_steps" if self.total_micro_batches is None else "completed")
