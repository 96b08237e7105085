"""Helpers for testing a trainer (ft's or a third party's): tiny, fast, exact job settings,
`JobMaker` (what the `make_job` fixture gives), `train` (run a job, collect its events, check
them against ft_train_core's event TypedDicts), and `tensors_sha256` for bit-identical checks.

Needs `ft-testing[conformance]` (ft-train-core, ft-data). The plugin imports this module only
inside the fixtures that use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ft_config.structure import structure_config
from ft_train_core.protocol import (
    END_REASONS,
    CheckpointEvent,
    EndEvent,
    EvalEvent,
    MessageEvent,
    SamplesEvent,
    StartEvent,
    StepEvent,
    Trainer,
    TrainJob,
    TrainResult,
)

TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {"max_seq_length": 128, "packing": False},
    "method": {
        "name": "lora",
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
    },
    "training": {
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "seed": 0,
        "lr_scheduler": "constant",
        "keep_last": 2,
        # The tests check float32 numbers (bit-identical resumes, packed == padded, ...);
        # `auto` would pick bf16 on CPUs that compute it natively.
        "precision": "fp32",
    },
    # One thread: CPU results then depend on nothing but the inputs.
    "resources": {"device": "cpu", "num_threads": 1},
}
"""The settings every test job starts from: LoRA r=4 on q_proj and v_proj, batches of 4,
float32 on one CPU thread."""


def job_settings(base: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A config dict: `TINY_SETTINGS`, then `base`, then `overrides`; both given as
    `section__key=value` (`training__max_steps=3`)."""
    data = json.loads(json.dumps(TINY_SETTINGS))  # a deep copy
    for key, value in {**(base or {}), **overrides}.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return data


def max_seq_length(base: Mapping[str, Any] | None = None) -> int:
    """The `data.max_seq_length` of `job_settings(base)`."""
    return int(job_settings(base)["data"]["max_seq_length"])


def is_short_alpaca_row(row: Mapping[str, str]) -> bool:
    """An Alpaca row without an input whose instruction and output make under 160 characters."""
    return not row.get("input") and len(row["instruction"]) + len(row["output"]) < 160


def prepare_rows(rows: list[dict[str, str]], model: Path, output: Path, *, max_length: int) -> Path:
    """`rows` prepared with `model`'s tokenizer into `output` (.h5), cut at `max_length`."""
    from ft_data.prepare import PrepareOptions, prepare_dataset

    source = output.with_suffix(".jsonl")
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prepare_dataset(
        source, model, output, PrepareOptions(max_length=max_length, on_too_long="truncate")
    )
    return output


def preference_rows(rows: list[dict[str, str]], shift: int = 7) -> list[dict[str, str]]:
    """Preference pairs from Alpaca rows: the instruction as the prompt, its own output
    chosen, and the output of the row `shift` places on (another task's answer) rejected."""
    return [
        {
            "prompt": row["instruction"],
            "chosen": row["output"],
            "rejected": rows[(i + shift) % len(rows)]["output"],
        }
        for i, row in enumerate(rows)
    ]


class JobMaker:
    """`make_job(arch="llama", run="run", validation=True, resume_from=None, **overrides)`: a
    TrainJob on the tiny `arch` model and the prepared Alpaca rows, in the run folder
    `root / run` (made on first use; the same `run` is the same folder, for resuming).
    `datasets(arch, max_length)` gives the (train, validation) files, prepared at the
    `max_seq_length` of `base`; `pairs(arch, max_length)` the same rows as preference pairs
    (`preference_rows`), which jobs with `method__objective="dpo"` or `"orpo"` train on."""

    def __init__(
        self,
        root: Path,
        models: Callable[[str], Path],
        datasets: Callable[[str, int], tuple[Path, Path]],
        base: Mapping[str, Any] | None = None,
        pairs: Callable[[str, int], tuple[Path, Path]] | None = None,
    ) -> None:
        self.root, self.models, self.datasets = root, models, datasets
        self.base = dict(base or {})
        self.pairs = pairs

    def __call__(
        self,
        arch: str = "llama",
        run: str = "run",
        validation: bool = True,
        resume_from: Path | None = None,
        **overrides: Any,
    ) -> TrainJob:
        config, problems = structure_config(job_settings(self.base, **overrides))
        assert config is not None and not problems, problems
        preference = {**self.base, **overrides}.get("method__objective", "sft") != "sft"
        source = self.pairs if preference and self.pairs is not None else self.datasets
        train, val = source(arch, max_seq_length(self.base))
        run_dir = self.root / run
        run_dir.mkdir(parents=True, exist_ok=True)
        return TrainJob(
            config=config,
            model_path=self.models(arch),
            train_data=train,
            validation_data=val if validation else None,
            run_dir=run_dir,
            resume_from=resume_from,
        )


# -- running a job ------------------------------------------------------------------------------


def train(
    trainer: Trainer | Callable[[], Trainer], job: TrainJob, *, stop_at: int | None = None
) -> tuple[list[dict[str, Any]], TrainResult]:
    """Run `job` on `trainer` (an instance, or a factory such as the trainer's class);
    with `stop_at`, `should_stop` says yes once step `stop_at` is done. Returns the events
    and the result, after checking both against the protocol (`check_run`)."""
    if isinstance(trainer, type) or not hasattr(trainer, "train"):
        trainer = trainer()  # a factory
    events: list[dict[str, Any]] = []

    def should_stop() -> bool:
        return stop_at is not None and any(
            e["type"] == "step" and e["step"] >= stop_at for e in events
        )

    result = trainer.train(job, emit=events.append, should_stop=should_stop)
    check_run(events, result)
    return events, result


def event_types(events: list[dict[str, Any]]) -> list[str]:
    """The `type` of each event, in order."""
    return [e["type"] for e in events]


def losses(events: list[dict[str, Any]]) -> list[float]:
    """The `loss` of each `step` event, in order."""
    return [e["loss"] for e in events if e["type"] == "step"]


# -- the event stream against ft_train_core.protocol ------------------------------------------

EVENT_TYPES: dict[str, type] = {
    "start": StartEvent,
    "step": StepEvent,
    "eval": EvalEvent,
    "samples": SamplesEvent,
    "checkpoint": CheckpointEvent,
    "message": MessageEvent,
    "end": EndEvent,
}


def _fields(kind: type) -> tuple[dict[str, Any], set[str]]:
    """A TypedDict's key types and its required keys. `NotRequired` is read from the type
    hints: with `from __future__ import annotations`, Python 3.11's `__required_keys__`
    counts every key as required."""
    fields, required = {}, set()
    for key, hint in typing.get_type_hints(kind, include_extras=True).items():
        if typing.get_origin(hint) is typing.NotRequired:
            hint = typing.get_args(hint)[0]
        else:
            required.add(key)
        fields[key] = hint
    return fields, required


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if origin is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if typing.is_typeddict(expected):
        return isinstance(value, dict) and not _problems(value, expected, "")
    if expected is type(None):
        return value is None
    if expected is float:  # an int is a float (PEP 484's numeric tower); a bool is neither
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def event_problems(event: Mapping[str, Any]) -> list[str]:
    """How `event` differs from its TypedDict in `ft_train_core.protocol`: an unknown type, a
    missing or unexpected key, a value of the wrong type. Empty when it conforms."""
    kind = EVENT_TYPES.get(event.get("type"))  # type: ignore[arg-type]
    if kind is None:
        return [f"unknown event type {event.get('type')!r} (known: {', '.join(EVENT_TYPES)})"]
    return _problems(event, kind, f"{event['type']}: ")


def _problems(value: Mapping[str, Any], kind: type, where: str) -> list[str]:
    """How the dict `value` differs from the TypedDict `kind` (keys and their types)."""
    fields, required = _fields(kind)
    problems = [f"{where}no key {k!r}" for k in sorted(required - value.keys())]
    problems += [f"{where}unexpected key {k!r}" for k in sorted(value.keys() - fields)]
    problems += [
        f"{where}{k}={value[k]!r} is not {fields[k]}"
        for k in sorted(value.keys() & fields.keys())
        if not _matches(value[k], fields[k])
    ]
    return problems


def check_events(events: list[dict[str, Any]]) -> None:
    """Assert that `events` is one run's stream: each event conforms to its TypedDict; one
    `start` first and one `end` last; steps counted on by one from where the run started;
    every evaluation's perplexity is exp(eval_loss)."""
    problems = [p for event in events for p in event_problems(event)]
    assert not problems, "events differ from ft_train_core.protocol:\n" + "\n".join(problems)
    kinds = event_types(events)
    assert kinds[:1] == ["start"] and kinds.count("start") == 1, kinds
    assert kinds[-1:] == ["end"] and kinds.count("end") == 1, kinds
    first = (events[0]["resumed_from_step"] or 0) + 1
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps == list(range(first, first + len(steps))), steps
    for e in events:
        if e["type"] == "eval" and math.isfinite(e["eval_loss"]):
            expected = math.exp(e["eval_loss"]) if e["eval_loss"] < 700 else math.inf
            assert math.isclose(e["perplexity"], expected, rel_tol=1e-6), e


def check_run(events: list[dict[str, Any]], result: TrainResult) -> None:
    """`check_events`, and the `TrainResult` says what the `end` event says."""
    check_events(events)
    end = events[-1]
    assert result.reason in END_REASONS, result.reason
    seen = (
        end["reason"],
        end["step"],
        end["adapter_path"],
        end["best_checkpoint"],
    )
    returned = (
        result.reason,
        result.step,
        str(result.adapter_path) if result.adapter_path else None,
        str(result.best_checkpoint) if result.best_checkpoint else None,
    )
    assert returned == seen, f"the TrainResult {returned} differs from the end event {seen}"


# -- files ------------------------------------------------------------------------------------


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file: name -> {dtype, shape, data_offsets} (no metadata)."""
    with Path(path).open("rb") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
    header.pop("__metadata__", None)
    return header


def tensors_sha256(folder: Path, file: str = "adapter_model.safetensors") -> str:
    """sha256 over every tensor of the safetensors file `folder / file`: its name, dtype,
    shape and bytes, in name order (the file's metadata is left out). Any dtype; read
    without numpy or torch."""
    data = (Path(folder) / file).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + size :]
    digest = hashlib.sha256()
    for name in sorted(header):
        tensor = header[name]
        start, end = tensor["data_offsets"]
        digest.update(f"{name}:{tensor['dtype']}:{tuple(tensor['shape'])}".encode())
        digest.update(body[start:end])
    return digest.hexdigest()
