"""DPO on the embedded model: does preference training move held-out preference accuracy?

SmolLM2-135M-Instruct (the embedded GGUF, imported) trained with `method.objective: dpo`
(LoRA r=8 on every linear layer, beta 0.1) by ft's torch trainer on preference pairs made
from real rows of shared/datasets/alpaca_en_demo.json: the instruction as the prompt, its own
answer chosen, the answer of another instruction rejected (a pair a person would judge at a
glance; the data set has no human preference labels). The first `--train` pairs train, the
next `--held-out` pairs (other instructions) are scored before and after:

- preference accuracy: the share of held-out pairs whose chosen answer the model finds more
  likely than the rejected one (summed log-probabilities, `evaluate_preference`);
- reward accuracy: DPO's implicit reward (the log-probability ratio to the base) of the chosen
  answer above the rejected one's (0.5 means no preference; the base's is undefined).

    uv run --no-sync python benchmarks/dpo_smollm2.py
    uv run --no-sync python benchmarks/dpo_smollm2.py --train 128 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def datasets_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets"
        if (candidate / "alpaca_en_demo.json").is_file():
            return candidate
    raise SystemExit("shared/datasets/alpaca_en_demo.json not found beside the checkout")


def pairs(count: int, longest: int, shift: int = 17) -> list[dict[str, str]]:
    """`count` preference pairs from Alpaca rows without an input and with answers under
    `longest` characters."""
    rows = json.loads((datasets_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    rows = [r for r in rows if not r.get("input") and len(r["output"]) < longest][:count]
    return [
        {
            "prompt": r["instruction"],
            "chosen": r["output"],
            "rejected": rows[(i + shift) % len(rows)]["output"],
        }
        for i, r in enumerate(rows)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=96, help="pairs to train on")
    parser.add_argument("--held-out", type=int, default=48, help="pairs to score")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--longest", type=int, default=400, help="answers under this many chars")
    args = parser.parse_args()

    from ft_config.structure import structure_config
    from ft_data.prepare import PrepareOptions, prepare_dataset
    from ft_models.resolve import resolve_model
    from ft_train_core.protocol import TrainJob
    from ft_train_torch import TorchTrainer

    model = resolve_model("smollm2-135m", offline=True, progress=False).path
    work = Path(tempfile.mkdtemp(prefix="ft-dpo-"))
    every = pairs(args.train + args.held_out, args.longest)
    files = {}
    for name, part in (("train", every[: args.train]), ("held-out", every[args.train :])):
        source = work / f"{name}.jsonl"
        source.write_text("".join(json.dumps(p) + "\n" for p in part), encoding="utf-8")
        files[name] = work / f"{name}.h5"
        prepare_dataset(source, model, files[name], PrepareOptions(max_length=256))

    trainer = TorchTrainer()
    before = trainer.evaluate_preference(model, None, files["held-out"])
    config, problems = structure_config(
        {
            "data": {"max_seq_length": 256, "packing": True},
            "method": {
                "name": "lora",
                "rank": 8,
                "alpha": 16.0,
                "dropout": 0.0,
                "target_modules": "all-linear",
                "objective": "dpo",
                "beta": args.beta,
            },
            "training": {
                "epochs": args.epochs,
                "batch_size": 4,
                "learning_rate": args.lr,
                "lr_scheduler": "cosine",
                "warmup_steps": 2,
                "seed": 0,
            },
            "resources": {"device": "cpu"},
        }
    )
    assert config is not None, problems
    job = TrainJob(
        config=config,
        model_path=model,
        train_data=files["train"],
        validation_data=None,
        run_dir=work / "run",
    )
    started = time.perf_counter()
    steps: list[dict] = []
    result = trainer.train(
        job,
        emit=lambda e: steps.append(e) if e["type"] == "step" else None,
        should_stop=lambda: False,
    )
    seconds = time.perf_counter() - started
    after = trainer.evaluate_preference(model, result.adapter_path, files["held-out"])
    margins = (np.asarray(after.chosen_logps) - before.chosen_logps) - (
        np.asarray(after.rejected_logps) - before.rejected_logps
    )
    print(
        f"SmolLM2-135M-Instruct, DPO LoRA r=8 all-linear, beta {args.beta}, lr {args.lr}: "
        f"{args.train} training pairs, {len(steps)} steps in {seconds:.0f} s"
    )
    first, last = steps[0], steps[-1]
    print(
        f"training loss {first['loss']:.4f} -> {last['loss']:.4f}; step accuracy "
        f"{first['accuracy']:.2f} -> {last['accuracy']:.2f}, margin {last['margin']:.3f}"
    )
    print(f"held-out pairs: {len(margins)}")
    print(f"preference accuracy, base model:  {before.accuracy:.4f}")
    print(f"preference accuracy, after DPO:   {after.accuracy:.4f}")
    print(f"reward accuracy after DPO:        {float(np.mean(margins > 0)):.4f}")
    print(f"mean reward margin (beta x):      {args.beta * float(np.mean(margins)):.4f}")


if __name__ == "__main__":
    main()
