"""Benchmark: `ft tune` with TPE against random search, under the same budget.

The job: the embedded SmolLM2-135M-Instruct, LoRA, on shared/datasets/alpaca_en_demo.json
(`--rows` rows to train on, the next `--validation` rows as the fixed validation set both studies
judge on), `--steps` optimizer steps of `--batch` rows per trial, evaluated every
`--steps / 2` steps (what the median pruner reads). Search space: ft's default LoRA space
(`ft_runs.tune_space.DEFAULT_SPACE`: learning rate log-uniform 3e-5..5e-4, rank {8, 16, 32, 64}
with alpha = 2r or rsLoRA, attention or all-linear targets, dropout, warmup). Two studies of
`--trials` trials each, the same seed, pruning on in both: `sampler: tpe` (multivariate) and
`sampler: random`. Printed: each trial, then the best validation loss of each study and its
wall time.

    uv run --no-sync python benchmarks/bench_tune.py                 # 8 + 8 trials
    uv run --no-sync python benchmarks/bench_tune.py --trials 4 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def datasets_dir() -> Path:
    if os.environ.get("FT_BENCH_DATASETS"):
        return Path(os.environ["FT_BENCH_DATASETS"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets"
        if (candidate / "alpaca_en_demo.json").is_file():
            return candidate
    raise SystemExit("shared/datasets/alpaca_en_demo.json not found beside the checkout")


def write_project(root: Path, args: argparse.Namespace) -> Path:
    rows = json.loads((datasets_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    short = [
        r for r in rows if len(r["instruction"]) + len(r.get("input", "")) + len(r["output"]) < 600
    ]
    train, validation = short[: args.rows], short[args.rows : args.rows + args.validation]
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", train), ("validation.jsonl", validation)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    config = root / "train.yml"
    config.write_text(
        f"model: {args.model}\n"
        "data: {train: train.jsonl, validation: validation.jsonl,"
        f" max_seq_length: {args.max_length}}}\n"
        "method: lora\n"
        f"training: {{backend: {args.backend}, max_steps: {args.steps}, batch_size: {args.batch},"
        f" eval_every: {max(1, args.steps // 2)}, precision: {args.precision}, seed: 42}}\n"
        "logging: {tensorboard: false}\n"
        f"tune: {{trials: {args.trials}, keep_adapters: 1}}\n",
        encoding="utf-8",
    )
    return config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--validation", type=int, default=24)
    p.add_argument("--max-length", type=int, default=256, help="data.max_seq_length")
    p.add_argument("--precision", default="auto", help="training.precision (auto, fp32, bf16)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--backend", default="torch")
    p.add_argument("--work", type=Path, default=None, help="keep the projects here")
    p.add_argument(
        "--samplers",
        default="tpe,random",
        help="the studies to run, in order (one each in two processes runs them side by side)",
    )
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-tune-"))
    os.environ.setdefault("FT_HOME", str(work / "ft_home"))

    from ft_runs import tune

    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; work {work}")
    results = {}
    for sampler in args.samplers.split(","):
        config = write_project(work / sampler, args)
        files = tune.start_study(config, name=sampler, sampler=sampler)
        started = time.monotonic()
        result = tune.run_study(
            files, say=lambda text, tag=sampler: print(f"  [{tag}] {text}", flush=True)
        )
        seconds = time.monotonic() - started
        best = result.best
        results[sampler] = (best["value"] if best else float("nan"), seconds, result)
        print(f"{sampler}: best validation loss {results[sampler][0]:.4f} in {seconds:.0f} s")
    print()
    print(f"{'sampler':<8} {'best eval_loss':>14} {'completed':>9} {'pruned':>6} {'wall s':>7}")
    for sampler, (value, seconds, result) in results.items():
        states = [r["state"] for r in result.trials]
        print(
            f"{sampler:<8} {value:>14.4f} {states.count('COMPLETE'):>9} "
            f"{states.count('PRUNED'):>6} {seconds:>7.0f}"
        )
        if result.best:
            print(f"         best settings: {result.best['settings']}")


if __name__ == "__main__":
    main()
