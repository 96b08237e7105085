"""What a checkpoint's trainer state holds and what decides whether a run may resume from it:
the loop's counters (`trainer_state.json`), the run's fingerprint (its settings, base model and
data) and the ONE list of settings that may change on resume. Both trainers and `ft train
--resume` use these, so a checkpoint means the same whichever backend wrote it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs

from ft_config import TrainConfig
from ft_config.structure import unstructure_config

TRAINER_STATE = "trainer_state.json"

# The ONE list of settings that may change between a run and its resume, read by `ft train
# --resume` (which refuses other changes unless --force) and by both trainers (which warn about
# other changes they are given). Dotted keys, or prefixes ending in a dot.
RESUME_NEUTRAL = (
    "logging.",
    "output.",
    "tune.",
    "profile",
    "training.save_every",
    "training.keep_last",
    "training.eval_every",
    # What the evaluations show, not what the run learns (greedy answers, no RNG drawn).
    "training.eval_samples",
    "training.eval_sample_tokens",
    "training.early_stopping_patience",
    "training.early_stopping_threshold",
    # Where a run ends: a resume may train longer or shorter than it first planned.
    "training.max_steps",
    "training.epochs",
    "training.backend",
    # Recomputing activations (torch restores the RNG for it) or compiling changes the memory
    # and speed of a step, not its result: a run stopped for memory resumes with it on.
    "training.gradient_checkpointing",
    "training.compile",
    "resources.device",
    "resources.max_memory_gb",
    "resources.hostfile",
    "resources.strategy",  # both write the same full-state checkpoints
    "resources.activation_offloading",
    # Threads change only the order of floating-point sums: the run trains the same, though a
    # CPU run resumed with another thread count is no longer bit-identical to an unbroken one.
    "resources.num_threads",
    "model.name",  # where the weights came from; the model fingerprint says what they are
    "model.revision",
    "data.train",  # where the data came from; the data fingerprint says what it is
    "data.validation",
    "data.test",
)


def is_resume_neutral(key: str) -> bool:
    """Whether setting `key` (dotted) may change on resume (`RESUME_NEUTRAL`)."""
    return key in RESUME_NEUTRAL or key.startswith(
        tuple(k for k in RESUME_NEUTRAL if k.endswith("."))
    )


def config_differences(before: TrainConfig, after: TrainConfig) -> list[str]:
    """The settings that changed from `before` to `after` and would change what a resumed run
    learns, one sentence each (`training.learning_rate was 0.0002, now 0.5`)."""
    old = flatten_settings(unstructure_config(before))
    new = flatten_settings(unstructure_config(after))
    return [
        f"{key} was {old.get(key)!r}, now {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not is_resume_neutral(key)
    ]


@attrs.define
class LoopState:
    """The loop's own counters, saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches of the current step done (0 at every checkpoint)
    best_metric: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None  # folder name under the checkpoints folder
    evals_without_improvement: int = 0
    elapsed_s: float = 0.0


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The `trainer_state.json` of checkpoint folder `folder`."""
    return json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))


def write_trainer_state(
    folder: Path,
    *,
    loop: LoopState,
    data_position: dict[str, int],
    fingerprint: dict[str, Any],
    scheduler: Any,
    rng: dict[str, Any],
    **extra: Any,
) -> None:
    """Write `trainer_state.json` into the checkpoint folder being built: the loop's counters,
    the data position, the scheduler's and the RNGs' JSON state (`host_rng_state()` plus what
    the backend adds), the run's fingerprint and any backend `extra` (JSON values)."""
    doc = {
        "loop": attrs.asdict(loop),
        "data_position": data_position,
        "scheduler": scheduler,
        **extra,
        "rng": rng,
        "fingerprint": fingerprint,
    }
    (Path(folder) / TRAINER_STATE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def host_rng_state() -> dict[str, Any]:
    """numpy's and Python's global generators, as JSON values (what every backend saves)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def set_host_rng_state(saved: dict[str, Any]) -> None:
    """Restore what `host_rng_state` returned."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = saved["python"]
    random.setstate((version, tuple(internal), gauss_next))


def fingerprint(
    config: TrainConfig, model_path: Path, train_data: Path, validation_data: Path | None
) -> dict[str, Any]:
    """What a run learns from: its settings (flattened, dotted keys), the base model and the data.

    The model is identified by its config.json and the names and sizes of its weight files (not
    their hashes: reading gigabytes at every checkpoint is too slow); a prepared dataset by its
    cache key (source bytes, tokenizer, template, options).
    """
    settings = flatten_settings(unstructure_config(config))
    model_files = {p.name: p.stat().st_size for p in sorted(Path(model_path).glob("*.safetensors"))}
    config_json = Path(model_path) / "config.json"
    model = {
        "config_sha256": hashlib.sha256(config_json.read_bytes()).hexdigest()
        if config_json.is_file()
        else None,
        "weights": model_files,
    }
    data = {"train": _dataset_id(train_data), "validation": _dataset_id(validation_data)}
    return {"settings": settings, "model": model, "data": data}


def _dataset_id(path: Path | None) -> str | None:
    if path is None:
        return None
    from ft_data.hdf5 import read_attrs

    attrs_ = read_attrs(path) or {}
    key = attrs_.get("cache_key") or attrs_.get("source_hash")
    if key:
        return str(key)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def flatten_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings mapping as dotted keys (`training.learning_rate`): what fingerprints,
    resume checks and `ft runs compare` compare."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(k, str) for k in value)
            and not prefix.endswith("columns")
        ):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_fingerprints(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The differences that make resuming unsafe, one sentence each (empty: compatible):
    settings outside `RESUME_NEUTRAL`, another base model, other data."""
    problems = []
    before, after = saved.get("settings", {}), current.get("settings", {})
    for key in sorted(set(before) | set(after)):
        if not is_resume_neutral(key) and before.get(key) != after.get(key):
            problems.append(f"{key} was {before.get(key)!r}, now {after.get(key)!r}")
    if saved.get("model") != current.get("model"):
        problems.append("the base model differs (config.json or weight files changed)")
    for split in ("train", "validation"):
        if saved.get("data", {}).get(split) != current.get("data", {}).get(split):
            problems.append(f"the {split} data differs (a different prepared dataset)")
    return problems


def check_resume_compatible(checkpoint: Path, job: Any) -> list[str]:
    """How resuming `job` (a `TrainJob`) from `checkpoint` would differ from the run that
    wrote it: changed settings (outside `RESUME_NEUTRAL`), another base model, other data.
    Empty when it is safe; the caller decides whether to refuse (unless forced)."""
    saved = read_trainer_state(checkpoint)["fingerprint"]
    current = fingerprint(job.config, job.model_path, job.train_data, job.validation_data)
    return compare_fingerprints(saved, current)
