"""Benchmark: DPO with ft's torch trainer against TRL's `DPOTrainer`.

The job, the same for both: SmolLM2-135M-Instruct (the embedded model, imported from its GGUF),
LoRA r=8, alpha=16, dropout 0 on q_proj/v_proj, the reference being the base with the adapter
off, DPO sigmoid loss with beta 0.1, AdamW at lr 5e-4 (constant), 4 pairs per optimizer step,
one pass over the same `--pairs` preference pairs (Alpaca rows of
shared/datasets/alpaca_en_demo.json: the row's own answer chosen, another row's rejected),
tokenized once by ft with the model's chat template (max 256 tokens a side), fed to both as the
same token ids (TRL's own tokenization is bypassed so the tokens are exactly equal), at the
same precision (`--precision`).

- ft: `TorchTrainer` with `method.objective: dpo`, pairs padded one a row (no packing: the
  same 4 pairs a step as TRL), both sides of a pair in one row attending apart.
- TRL: `DPOTrainer` with `peft_config` (the same LoRA), its collator and loss.

Each runs in its own child process, so each peak memory (RSS) is its own. Speed is pairs per
second of training (model loading and data preparation excluded: from the first step's start
to the last step's end, as each trainer reports it).

    uv run --no-sync python benchmarks/bench_dpo.py
    uv run --no-sync python benchmarks/bench_dpo.py --pairs 64 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_LENGTH = 256
BATCH = 4
LR = 5e-4
BETA = 0.1


def datasets_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets"
        if (candidate / "alpaca_en_demo.json").is_file():
            return candidate
    raise SystemExit("shared/datasets/alpaca_en_demo.json not found beside the checkout")


def model_dir() -> Path:
    from ft_models.resolve import resolve_model

    return resolve_model("smollm2-135m", offline=True, progress=False).path


def prepare(work: Path, count: int, longest: int) -> Path:
    """The pairs prepared by ft (HDF5) and, for TRL, as token ids (`pairs.json`)."""
    import numpy as np

    from ft_data.hdf5 import PreparedDataset
    from ft_data.prepare import PrepareOptions, prepare_dataset

    rows = json.loads((datasets_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    rows = [r for r in rows if not r.get("input") and len(r["output"]) < longest][:count]
    pairs = [
        {"prompt": r["instruction"], "chosen": r["output"], "rejected": rows[(i + 17) % len(rows)]["output"]}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    source = work / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    prepared = work / "pairs.h5"
    prepare_dataset(source, model_dir(), prepared, PrepareOptions(max_length=MAX_LENGTH))
    tokens = []
    with PreparedDataset(prepared) as data:
        for i in range(len(data)):
            (chosen, mask), (rejected, _) = data[i], data.rejected(i)
            start = int(np.argmax(mask))
            tokens.append(
                {
                    "prompt_ids": chosen[:start].tolist(),
                    "chosen_ids": chosen[start:].tolist(),
                    "rejected_ids": rejected[start:].tolist(),
                }
            )
    (work / "pairs.json").write_text(json.dumps(tokens), encoding="utf-8")
    return prepared


# ---- the children ----------------------------------------------------------------------------


def run_ft(work: Path, precision: str) -> dict[str, Any]:
    from ft_config.structure import structure_config
    from ft_train_core.protocol import TrainJob
    from ft_train_torch import TorchTrainer

    config, problems = structure_config(
        {
            "data": {"max_seq_length": MAX_LENGTH, "packing": False},
            "method": {
                "name": "lora",
                "rank": 8,
                "alpha": 16.0,
                "dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
                "objective": "dpo",
                "beta": BETA,
            },
            "training": {
                "epochs": 1,
                "batch_size": BATCH,
                "learning_rate": LR,
                "lr_scheduler": "constant",
                "warmup_steps": 0,
                "weight_decay": 0.0,
                "seed": 0,
                "precision": precision,
                "save_every": 10_000,
            },
            "resources": {"device": "cpu"},
        }
    )
    assert config is not None, problems
    job = TrainJob(
        config=config,
        model_path=model_dir(),
        train_data=work / "pairs.h5",
        validation_data=None,
        run_dir=work / "ft-run",
    )
    steps: list[dict[str, Any]] = []
    TorchTrainer().train(
        job,
        emit=lambda e: steps.append(e) if e["type"] == "step" else None,
        should_stop=lambda: False,
    )
    pairs = len(json.loads((work / "pairs.json").read_text()))
    return {"steps": len(steps), "pairs": pairs, "seconds": steps[-1]["elapsed_s"], "loss": steps[-1]["loss"]}  # fmt: skip


def run_trl(work: Path, precision: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Pretokenized(DPOTrainer):
        """TRL's trainer on token ids made by ft: its own tokenization is skipped."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
            return dataset

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.started: float | None = None
            self.ended = 0.0
            self.losses: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self.started is None:
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.ended = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    torch.manual_seed(0)
    tokens = json.loads((work / "pairs.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    args = DPOConfig(
        output_dir=str(work / "trl-run"),
        beta=BETA,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=precision == "bf16",
        max_length=2 * MAX_LENGTH,
        seed=0,
        dataloader_num_workers=0,
    )
    clock = Clock()
    trainer = Pretokenized(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(tokens),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
        ),
        callbacks=[clock],
    )
    trainer.train()
    assert clock.started is not None
    return {
        "steps": len(clock.losses),
        "pairs": len(tokens),
        "seconds": clock.ended - clock.started,
        "loss": clock.losses[-1],
    }


# ---- the parent ------------------------------------------------------------------------------


def child(name: str, work: Path, precision: str) -> dict[str, Any]:
    out = work / f"{name}.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(
        [sys.executable, __file__, "--child", name, "--work", str(work), "--precision", precision],
        check=True,
        env=env,
    )
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--longest", type=int, default=400, help="answers under this many chars")
    parser.add_argument("--child", choices=("ft", "trl"))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        result = (run_ft if args.child == "ft" else run_trl)(args.work, args.precision)
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        (args.work / f"{args.child}.json").write_text(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="ft-bench-dpo-"))
    prepare(work, args.pairs, args.longest)
    print(
        f"SmolLM2-135M-Instruct, DPO (beta {BETA}), LoRA r=8 q_proj/v_proj, {args.pairs} pairs "
        f"(answers < {args.longest} chars), "
        f"{BATCH} pairs a step, {args.precision}, CPU threads {os.cpu_count()}, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    results = {name: child(name, work, args.precision) for name in ("ft", "trl")}
    for name, r in results.items():
        print(
            f"{name:>4}: {r['steps']} steps, {r['pairs'] / r['seconds']:.3f} pairs/s, peak RSS "
            f"{r['peak_rss_bytes'] / 1e9:.2f} GB, final loss {r['loss']:.4f}"
        )
    ft, trl = results["ft"], results["trl"]
    speed = (ft["pairs"] / ft["seconds"]) / (trl["pairs"] / trl["seconds"])
    memory = ft["peak_rss_bytes"] / trl["peak_rss_bytes"]
    print(f"ratio ft/TRL: speed {speed:.2f}x (goal >= 1.5), peak memory {memory:.2f}x (goal <= 1)")


if __name__ == "__main__":
    main()
