"""The Python API: train a model folder on a prepared dataset, load what was trained.

    from ft_train_mlx import train
    result = train("path/to/model", "train.h5", {"method": "lora", "training": {"max_steps": 10}},
                   output_dir="runs/one", callbacks=[print])

`train` builds the same `TrainJob` that `ft train` builds and runs `MLXTrainer` on it, so
runs started here and from the CLI have the same folders, checkpoints and events.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import mlx.nn as nn

from ft_config import MethodConfig, TrainConfig
from ft_config.structure import structure_config
from ft_models.checkpoint import latest_valid_checkpoint
from ft_train_core.protocol import TrainJob, TrainResult
from ft_train_mlx.methods import FT_ADAPTER, PEFT_CONFIG, apply_method, load_peft_tensors
from ft_train_mlx.trainer import MLXTrainer

Event = dict[str, Any]


def make_config(config: TrainConfig | Mapping[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from a train.yml-style mapping (sections `model`, `data`, `method`,
    `training`, ...), checked as `ft train` checks a file. Raises ValueError naming each bad key."""
    if isinstance(config, TrainConfig):
        return config
    data = dict(config or {})
    data.setdefault("training", {})
    data["training"] = {"backend": "mlx", **data["training"]}
    structured, problems = structure_config(data)
    if structured is None or problems:
        raise ValueError(f"invalid training config: {problems}")
    return structured


def train(
    model: str | Path,
    dataset: str | Path,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    output_dir: str | Path,
    validation: str | Path | None = None,
    callbacks: Iterable[Callable[[Event], None]] = (),
    resume: bool | str | Path = False,
    should_stop: Callable[[], bool] | None = None,
    initial_adapter: str | Path | None = None,
) -> TrainResult:
    """Train the model in folder `model` (a Hugging Face safetensors folder) on the prepared
    dataset `dataset` (an HDF5 file from `ft dataset prepare` / `ft_data.prepare.prepare_dataset`).

    `config` is a TrainConfig or a mapping of train.yml sections. Every event (see
    `ft_train_core.protocol`) goes to each callback. The run folder `output_dir` gets `checkpoints/`
    and, at the end, `adapter/` (PEFT layout; the whole model for `method: full`).
    `resume=True` continues from the newest valid checkpoint there (if any), or give a
    checkpoint folder. Ctrl-C stops after the current step with a checkpoint (reason
    `interrupted`), as does `should_stop()` returning True. `initial_adapter` (a PEFT-layout
    LoRA/DoRA folder) replaces the random initial adapter weights.
    """
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from: Path | None = None
    if resume is True:
        found = latest_valid_checkpoint(run_dir / "checkpoints")
        resume_from = found[0] if found else None
    elif resume:
        resume_from = Path(resume)
    job = TrainJob(
        config=make_config(config),
        model_path=Path(model),
        train_data=Path(dataset),
        validation_data=Path(validation) if validation else None,
        run_dir=run_dir,
        resume_from=resume_from,
    )
    sinks = list(callbacks)

    def emit(event: Event) -> None:
        for sink in sinks:
            sink(event)

    interrupted = threading.Event()

    def stop() -> bool:
        return interrupted.is_set() or (should_stop is not None and should_stop())

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        trainer = MLXTrainer(Path(initial_adapter) if initial_adapter else None)
        return trainer.train(job, emit=emit, should_stop=stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def load_adapted(
    model: str | Path, adapter: str | Path, *, dtype: str = "float32"
) -> tuple[nn.Module, Any]:
    """(MLX model, tokenizer): the base in folder `model` with the PEFT-layout LoRA/DoRA adapter
    in folder `adapter` applied (not merged), in eval mode."""
    from ft_models.load import load_mlx, read_config

    adapter = Path(adapter)
    spec = json.loads((adapter / PEFT_CONFIG).read_text(encoding="utf-8"))
    if spec.get("peft_type") != "LORA":
        raise ValueError(f"{adapter}: a {spec.get('peft_type')} adapter; MLX applies LoRA/DoRA")
    extra_file = adapter / FT_ADAPTER
    extra = json.loads(extra_file.read_text(encoding="utf-8")) if extra_file.is_file() else {}
    method = MethodConfig(
        name=extra.get("method") or ("dora" if spec.get("use_dora") else "lora"),
        rank=int(spec["r"]),
        alpha=float(spec["lora_alpha"]),
        dropout=0.0,
        target_modules=spec["target_modules"],
        rslora=bool(spec.get("use_rslora")),
        quant_bits=int(extra.get("quant_bits", 4)),
    )
    mlx_model, tokenizer = load_mlx(Path(model), dtype=dtype)
    apply_method(mlx_model, method)
    load_peft_tensors(mlx_model, adapter, str(read_config(Path(model)).get("model_type", "")))
    mlx_model.eval()
    return mlx_model, tokenizer
