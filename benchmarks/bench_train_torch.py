"""Benchmark: LoRA training with ft's torch trainer against transformers `Trainer` + peft.

The job, the same for both: SmolLM2-135M-Instruct (the embedded model, imported from its GGUF),
LoRA r=8, alpha=16, dropout 0 on q_proj/v_proj, AdamW at lr 2e-4 (constant), one pass over
the same `--examples` rows of shared/datasets/alpaca_en_demo.json rendered with the model's
chat template, max length 512, only the answers trained. `--batch` examples per optimizer step
for the baseline; ft packs the same examples into rows of 512 tokens (`--batch` rows per step
is too many tokens for a fair step count, so ft takes `batch // 2` packed rows: about the same
tokens per step). Both then see the same examples once, at the same precision (`--precision`:
fp32, bf16 (autocast, as the Trainer's `bf16=True`), or both, each pair back to back so a
ratio is read under the same machine load). The CPU's features (AVX-512, AVX512-BF16, AMX) and
the load average are printed first: bf16 only pays where the CPU computes it.

- ft: `TorchTrainer` on the prepared HDF5 file (packing, attention confined to each example).
- baseline: what a user writes instead: `Trainer` + `get_peft_model`, rows tokenized with
  `apply_chat_template`, labels -100 outside the answer, `DataCollatorForSeq2Seq` padding.

Each runs in its own child process, so each peak memory (RSS; on a GPU the allocator peak) is its own. Speed is
non-padding tokens per second of training (model loading excluded). The validation loss of
both adapters is computed afterwards by the same code, on the same 16 held-out rows.

ft's achieved FLOP/s is 4 N tokens/s for LoRA (forward 2N, backward through frozen weights
2N; N = parameters), against the machine's measured matmul peak in fp32 and bf16.

    uv run --no-sync python benchmarks/bench_train_torch.py --examples 48
    uv run --no-sync python benchmarks/bench_train_torch.py --precision both
    uv run --no-sync python benchmarks/bench_train_torch.py --examples 24 --profile 3  # per-op table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_LENGTH = 512
VALIDATION_ROWS = 16


def datasets_dir() -> Path:
    if os.environ.get("FT_BENCH_DATASETS"):
        return Path(os.environ["FT_BENCH_DATASETS"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets"
        if (candidate / "alpaca_en_demo.json").is_file():
            return candidate
    raise SystemExit("shared/datasets/alpaca_en_demo.json not found beside the checkout")


def model_dir(args: argparse.Namespace, work: Path) -> Path:
    """The embedded SmolLM2-135M-Instruct, or `--model`; with `--random-init`, a model of the
    same shape with random weights (the same speed: how a GPU machine gets it without carrying
    the weights there)."""
    if args.model:
        if not args.random_init:
            return args.model
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        folder = work / "random-model"
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model)).save_pretrained(
            folder
        )
        AutoTokenizer.from_pretrained(args.model).save_pretrained(folder)
        return folder
    from ft_models.resolve import resolve_model

    return resolve_model("smollm2-135m", offline=True, progress=False).path


# ---- the parent ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=96, help="training rows (one pass)")
    parser.add_argument("--batch", type=int, default=4, help="baseline examples per step")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "both"],
        default="fp32",
        help="both sides' precision",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", type=Path, help="a model folder instead of the embedded one")
    parser.add_argument(
        "--random-init", action="store_true", help="with --model: its config, random weights"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="profile STEPS optimizer steps of each run (after 2 warm-up steps) with "
        "torch.profiler and print its per-op table (the speed then includes the profiler)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="ft-bench-train-") as tmp:
        work = Path(tmp)
        model = model_dir(args, work)
        rows = json.loads((datasets_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))
        train_rows = rows[VALIDATION_ROWS : VALIDATION_ROWS + args.examples]
        val_rows = rows[:VALIDATION_ROWS]
        for name, part in (("train", train_rows), ("validation", val_rows)):
            with (work / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                for row in part:
                    f.write(json.dumps(row) + "\n")
        (work / "model.txt").write_text(str(model))
        print(f"model {model}; {len(train_rows)} training rows, {len(val_rows)} validation rows")
        print(
            f"threads {args.threads}; torch {_version('torch')}, transformers {_version('transformers')}, peft {_version('peft')}"
        )

        print(machine_summary(args.device))
        print(
            f"load average {load_average()} (the machine's other work: read ratios, not tokens/s)"
        )
        # On a shared, loaded machine spinning OpenMP threads slow both sides: export
        # OMP_WAIT_POLICY=PASSIVE there (the children inherit it; ft-server sets it itself).
        print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")

        peaks = measure_matmul_peaks(args.threads, args.device)
        runs: dict[str, dict[str, Any]] = {}
        precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
        # Each precision's pair runs back to back (ft, then the baseline at the same
        # precision), so a ratio is read under the same load.
        for precision in precisions:
            extra = ["--precision", precision]
            runs[f"ft-{precision}"] = child("ft", args, work, extra=extra)
            runs[f"baseline-{precision}"] = child("baseline", args, work, extra=extra)
        for run in runs.values():
            run["eval_loss"] = eval_loss(model, Path(run["adapter"]), work / "validation.h5")

    params = 134_515_008
    print()
    print(f"load average {load_average()}")
    print(f"{'':<14}{'tokens/s':>10}{'peak mem':>11}{'val loss':>10}{'steps':>7}{'train s':>9}")
    for name, run in runs.items():
        print(
            f"{name:<14}{run['tokens_per_s']:>10.1f}{run['peak_rss'] / 2**30:>9.2f} G"
            f"{run['eval_loss']:>10.4f}{run['steps']:>7}{run['seconds']:>9.1f}"
        )
    for name, run in runs.items():
        if name.startswith("baseline"):
            continue
        precision = name.split("-")[1]
        base = runs[f"baseline-{precision}"]
        flops = 4 * params * run["tokens_per_s"]
        print(
            f"\n{name} / baseline-{precision}: {run['tokens_per_s'] / base['tokens_per_s']:.2f}x tokens/s, "
            f"{run['peak_rss'] / base['peak_rss']:.2f}x peak memory, "
            f"val loss {run['eval_loss']:.4f} vs {base['eval_loss']:.4f}"
        )
        print(
            f"{name} achieved {flops / 1e9:.1f} GFLOP/s = {flops / peaks[precision]:.1%} of the "
            f"measured {precision} matmul peak ({peaks[precision] / 1e9:.1f} GFLOP/s)"
        )


def _version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def child(
    name: str, args: argparse.Namespace, work: Path, extra: tuple[str, ...] | list[str] = ()
) -> dict[str, Any]:
    argv = [
        sys.executable, __file__, "--child", name, "--work", str(work),
        "--examples", str(args.examples), "--batch", str(args.batch),
        "--threads", str(args.threads), "--device", args.device,
        "--profile", str(args.profile), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{name} failed (exit {process.returncode})")
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["wall_s"] = wall
    print(
        f"{name}: {result['tokens_per_s']:.1f} tokens/s, {result['steps']} steps, wall {wall:.0f} s"
    )
    return result


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_summary(device: str) -> str:
    """The CPU and what it computes fast (AVX2, AVX-512, AVX512-BF16, AMX), or the GPU: a run
    is read against these (bf16 is ~100x slower than fp32 on an AVX2-only CPU)."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = torch.cpu
    features = {
        "AVX2": getattr(cpu, "_is_avx2_supported", lambda: False)(),
        "AVX-512": getattr(cpu, "_is_avx512_supported", lambda: False)(),
        "AVX512-BF16": getattr(cpu, "_is_avx512_bf16_supported", lambda: False)(),
        "AMX": getattr(cpu, "_is_amx_tile_supported", lambda: False)(),
    }
    have = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in features.items())
    line = (
        f"cpu {model}: {os.cpu_count()} logical CPUs; {have}; "
        f"torch capability {torch.backends.cpu.get_cpu_capability()}"
    )
    if device.startswith("cuda") and torch.cuda.is_available():
        line += f"\ngpu {torch.cuda.get_device_name()} (bf16 {torch.cuda.is_bf16_supported()})"
    return line


def profiler(args: argparse.Namespace) -> Any:
    """A torch.profiler over `args.profile` steps after two warm-up ones (None without
    `--profile`); the caller calls `.step()` after every optimizer step."""
    if not args.profile:
        return None
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=args.profile, repeat=1)
    return torch.profiler.profile(activities=activities, schedule=schedule)


def print_profile(prof: Any, name: str, steps: int) -> None:
    """The top ops by self time, each with its share of the profiled steps' total, to stderr."""
    if prof is None:
        return
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    out = [f"\n== profile {name}: {steps} steps, {total / 1e3 / steps:.0f} ms self CPU a step =="]
    out.append(f"{'op':<48}{'calls':>8}{'ms/step':>10}{'share':>8}")
    for e in rows:
        out.append(
            f"{e.key[:47]:<48}{e.count // steps:>8}{e.self_cpu_time_total / 1e3 / steps:>10.1f}"
            f"{e.self_cpu_time_total / total:>8.1%}"
        )
    print("\n".join(out), file=sys.stderr, flush=True)


def measure_matmul_peaks(threads: int, device: str = "cpu") -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    peaks = {}
    size = 1024 if device == "cpu" else 8192
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            n = 0
            while time.perf_counter() - started < 0.5:
                a @ b
                n += 1
            if device != "cpu":
                torch.cuda.synchronize()
            best = max(best, 2 * size**3 * n / (time.perf_counter() - started))
        peaks[name] = best
        print(f"matmul peak {name}: {best / 1e9:.1f} GFLOP/s ({size}x{size}, {device})")
    return peaks


def eval_loss(model_path: Path, adapter: Path, validation: Path) -> float:
    """Token-weighted mean loss over the answer tokens of the held-out rows."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ft_data.hdf5 import PreparedDataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    model = PeftModel.from_pretrained(base, adapter).eval()
    total, count = 0.0, 0
    with PreparedDataset(validation) as data, torch.no_grad():
        for i in range(len(data)):
            tokens, mask = data[i]
            ids = torch.tensor(tokens, dtype=torch.long, device=device)[None]
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = ids[0, 1:]
            keep = torch.tensor(mask[1:], dtype=torch.bool, device=device)
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            total += float(losses[keep].sum())
            count += int(keep.sum())
    return total / count


# ---- the children ----------------------------------------------------------------------------


def run_ft(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ft_config.structure import structure_config
    from ft_data.prepare import PrepareOptions, prepare_dataset
    from ft_train_core.protocol import TrainJob
    from ft_train_torch import TorchTrainer

    torch.set_num_threads(args.threads)
    work, model = args.work, Path((args.work / "model.txt").read_text())
    options = PrepareOptions(max_length=MAX_LENGTH, on_too_long="truncate")
    for name in ("train", "validation"):
        prepare_dataset(work / f"{name}.jsonl", model, work / f"{name}.h5", options)
    precision = args.precision or "fp32"
    config, problems = structure_config(
        {
            "model": {"name": str(model)},
            "data": {"max_seq_length": MAX_LENGTH, "packing": True},
            "method": {
                "name": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
            },
            "training": {
                "epochs": 1, "batch_size": max(1, args.batch // 2), "learning_rate": 2e-4,
                "lr_scheduler": "constant", "warmup_steps": 0, "precision": precision,
                "seed": 0, "keep_last": 1,
            },
            "resources": {"device": args.device, "num_threads": args.threads},
        }
    )  # fmt: skip
    assert config is not None and not problems, problems
    run_dir = work / f"ft-{precision}"
    run_dir.mkdir()
    job = TrainJob(config, model, work / "train.h5", None, run_dir)
    steps: list[dict[str, Any]] = []
    prof = profiler(args)

    def emit(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            steps.append(event)
            if prof is not None:
                prof.step()

    if prof is not None:
        prof.start()
    result = TorchTrainer().train(job, emit, lambda: False)
    if prof is not None:
        prof.stop()
        print_profile(prof, f"ft {precision}", args.profile)
    tokens = sum(s["tokens"] for s in steps)
    seconds = steps[-1]["elapsed_s"]
    return {
        "tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds,
        "steps": len(steps), "adapter": str(result.adapter_path), "peak_rss": peak_rss(),
    }  # fmt: skip


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.set_num_threads(args.threads)
    work, model_path = args.work, Path((args.work / "model.txt").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = []
    for line in (work / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        prompt = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
        messages = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": row["output"]}], tokenize=True
        )
        head, full = _ids(head), _ids(full)
        full = full[:MAX_LENGTH]
        labels = [-100] * min(len(head), len(full)) + full[len(head) :]
        examples.append({"input_ids": full, "attention_mask": [1] * len(full), "labels": labels})
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    timing: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            timing["start"] = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            timing["end"] = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if prof is not None:
                prof.step()

    prof = profiler(args)

    out = work / "baseline"
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(out), per_device_train_batch_size=args.batch, num_train_epochs=1,
            learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=args.device == "cpu", seed=0,
            dataloader_num_workers=0, bf16=args.precision == "bf16",
        ),
        train_dataset=examples,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=[Clock()],
    )  # fmt: skip
    if prof is not None:
        prof.start()
    output = trainer.train()
    if prof is not None:
        prof.stop()
        print_profile(prof, f"HF Trainer + peft {args.precision}", args.profile)
    model.save_pretrained(out / "adapter")
    tokens = sum(len(e["input_ids"]) for e in examples)
    seconds = timing["end"] - timing["start"]
    return {
        "tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds,
        "steps": output.global_step, "adapter": str(out / "adapter"), "peak_rss": peak_rss(),
    }  # fmt: skip


def _ids(value: Any) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    return list(value)


def peak_rss() -> int:
    """Peak RSS; on a GPU, the peak of torch's allocator (what bounds the batch there)."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        return torch.cuda.max_memory_allocated()

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


CHILDREN = {"ft": run_ft, "baseline": run_baseline}

if __name__ == "__main__":
    main()
