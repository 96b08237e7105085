"""Finding trainers: the `ft.trainers` entry point group (ft's own backends are registered the
same way a third party's would be)."""

from __future__ import annotations

import functools
import logging
from importlib import metadata

from ft_train_core.protocol import Trainer

GROUP = "ft.trainers"
INSTALL_HINT = {
    "torch": 'pip install ft-train-torch   (or: pip install "ft-cli[torch]")',
    "mlx": 'pip install ft-train-mlx     (Apple Silicon; on Linux it uses "mlx[cpu]")',
}
log = logging.getLogger(__name__)


class TrainerNotAvailable(LookupError):
    """The backend asked for is not installed or failed to load."""


@functools.lru_cache(maxsize=1)
def trainer_entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed trainers by backend name (discovered once per process)."""
    from ft_config import plugins

    return plugins.discover(GROUP)


def get_trainer(backend: str) -> Trainer:
    """An instance of the trainer for `backend` (`torch`, `mlx`, or a plugin's name)."""
    ep = trainer_entry_points().get(backend)
    if ep is None:
        installed = ", ".join(sorted(trainer_entry_points())) or "none"
        hint = INSTALL_HINT.get(
            backend, f"install the package that provides the {backend!r} trainer"
        )
        raise TrainerNotAvailable(
            f"no {backend!r} trainer is installed (installed: {installed}); {hint}"
        )
    from ft_config import plugins

    try:
        trainer = plugins.load_entry_point(ep)()
    except plugins.PluginError as exc:
        raise TrainerNotAvailable(
            f"the {backend!r} trainer failed to load: {exc.__cause__}"
        ) from exc.__cause__
    except ImportError as exc:
        raise TrainerNotAvailable(f"the {backend!r} trainer failed to load: {exc}") from exc
    if not isinstance(trainer, Trainer):
        raise TrainerNotAvailable(f"{ep.value} does not implement ft_train_core.protocol.Trainer")
    return trainer


def evaluator_for(task: str, preferred: str | None = None) -> Trainer:
    """The installed trainer that evaluates `task` (`model.task`): `preferred` (the run's
    backend) when it is installed and evaluates that task, else the first installed one that
    does (a run trained with torch is evaluated with MLX where only MLX is installed: the
    adapters are in PEFT's layout either way). Raises TrainerNotAvailable naming what to
    install."""
    names = sorted(trainer_entry_points(), key=lambda name: name != preferred)
    for name in names:
        try:
            trainer = get_trainer(name)
        except TrainerNotAvailable:
            continue
        if task in getattr(trainer.capabilities(), "tasks", ("causal-lm",)):
            return trainer
    raise TrainerNotAvailable(
        f"no installed trainer evaluates {task} models (installed: "
        f"{', '.join(names) or 'none'}); {INSTALL_HINT['torch']}"
    )
