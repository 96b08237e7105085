"""Benchmark: LoRA training with ft's MLX trainer against mlx-lm's own LoRA trainer (`mlx_lm.lora`).

The job, the same for both: a small random Llama shaped like SmolLM2 (its tokenizer and chat
template, 49,152-token vocabulary, tied embeddings; `--layers` blocks of width `--width`: the
real 135M model runs at a few tokens/s on mlx[cpu]'s reference BLAS, `--model smollm2` takes it
anyway), LoRA r=8, alpha=16 (mlx-lm's scale 2.0), dropout 0 on q_proj/v_proj of every block,
AdamW with bias correction at lr 2e-4, one pass over the same `--examples` rows of
shared/datasets/alpaca_en_demo.json as chat (user: instruction + input, assistant: output),
only the answers trained, rows up to 512 tokens, at the same precision (`--precision fp32`,
`bf16` or `both`): in bf16 both load the base weights in bfloat16 (ft: `training.precision:
bf16`; mlx-lm: a bfloat16 copy of the model folder, which it trains in the dtype it finds) and
keep the LoRA weights in float32.

- ft: `ft_train_mlx.train` on the prepared HDF5 file, packing (`--batch // 2` packed rows of 512
  tokens per step, about the tokens of `--batch` examples), attention confined per example.
- mlx-lm: `mlx_lm.lora.train_model` (what `mlx_lm.lora --train` runs) on prompt/completion JSONL
  with `mask_prompt`, `--batch` examples per step (padded to a multiple of 32), `iters` = one pass.
  Its Python API is used, not the CLI, to get its own report of tokens and time (the CLI no
  longer prints peak memory, and `lora.run()` ignores a training callback).

Each runs in its own child process, so each peak RSS (`os.wait4`) is its own; MLX's own
`mx.get_peak_memory()` after training is reported too (loading excluded: reset after the model
is loaded). Speed is non-padding tokens per second of training steps (loading, evaluation and
checkpoint writes excluded for both: ft's step events, mlx-lm's train_time). The validation loss
of both trained models is computed afterwards by the same code (ft's summed token loss / trained
tokens) on the same 16 held-out rows.

On Linux, mlx[cpu] ships a reference BLAS. `FT_MLX_MKL=1` preloads Intel MKL's `libmkl_rt`
from an installed `mkl` wheel (`uv run --no-sync --with mkl ...`) into both children: opt-in,
nothing in the lock changes. On a Mac (Metal) the same script runs as is.

    uv run --no-sync python benchmarks/bench_train_mlx.py
    FT_MLX_MKL=1 uv run --no-sync --with mkl python benchmarks/bench_train_mlx.py
    uv run --no-sync python benchmarks/bench_train_mlx.py --precision both
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_features

MAX_LENGTH = 512
VALIDATION_ROWS = 16
LR = 2e-4
RANK, ALPHA = 8, 16.0


def datasets_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets"
        if (candidate / "alpaca_en_demo.json").is_file():
            return candidate
    raise SystemExit("shared/datasets/alpaca_en_demo.json not found beside the checkout")


def smollm2_dir() -> Path:
    from ft_models.resolve import resolve_model

    return resolve_model("smollm2-135m", offline=True, progress=False).path


def build_model(out: Path, layers: int, width: int, seed: int = 0) -> Path:
    """A random Llama with SmolLM2's tokenizer, config fields and tied embeddings, fp32."""
    if out.exists():
        return out
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from ft_models.load import mlx_config_overrides

    source = smollm2_dir()
    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers, config.hidden_size = layers, width
    config.intermediate_size = 3 * width
    config.num_attention_heads, config.num_key_value_heads = 4, 2
    config.head_dim = width // 4
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    saved = json.loads((out / "config.json").read_text())
    saved.update(mlx_config_overrides(saved))  # rope_theta where mlx-lm reads it, for both
    (out / "config.json").write_text(json.dumps(saved, indent=2))
    return out


def mkl_env() -> dict[str, str]:
    """LD_PRELOAD for MKL when FT_MLX_MKL=1 (and an `mkl` wheel is installed)."""
    if os.environ.get("FT_MLX_MKL") != "1":
        return {}
    from importlib import metadata

    try:
        files = metadata.distribution("mkl").files or []
    except metadata.PackageNotFoundError:
        raise SystemExit(
            "FT_MLX_MKL=1 needs the mkl wheel: uv run --no-sync --with mkl python benchmarks/bench_train_mlx.py"
        ) from None
    libs = [f for f in files if f.name.startswith("libmkl_rt.so")]
    if not libs:
        raise SystemExit("the installed mkl wheel has no libmkl_rt.so")
    return {"LD_PRELOAD": str(libs[0].locate().resolve())}


# ---- the parent ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=8, help="training rows (one pass)")
    parser.add_argument("--batch", type=int, default=4, help="mlx-lm examples per step")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "both"], default="fp32", help="both sides'"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.examples % args.batch:
        raise SystemExit("--examples must be a multiple of --batch (mlx-lm then sees each once)")

    with tempfile.TemporaryDirectory(prefix="ft-bench-mlx-") as tmp:
        work = Path(tmp)
        model = (
            smollm2_dir()
            if args.model == "smollm2"
            else build_model(work / "model", args.layers, args.width)
        )
        rows = json.loads((datasets_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))
        parts = {
            "train": rows[VALIDATION_ROWS : VALIDATION_ROWS + args.examples],
            "valid": rows[:VALIDATION_ROWS],
        }
        prepare(work, model, parts)
        env = {**os.environ, **mkl_env()}
        print(f"cpu {cpu_features()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
        for precision in precisions:
            # mlx-lm trains in the dtype of the folder it loads: bf16 gets a bfloat16 copy
            folder = model if precision == "fp32" else bfloat16_copy(model, work / "model-bf16")
            (work / "model_path").write_text(str(folder))
            # each precision's pair back to back, so a ratio is read under the same load
            results = {
                name: run_child(name, args, work, env, precision) for name in ("ft", "mlx_lm")
            }
            report(results, args, folder, bool(env.get("LD_PRELOAD")), precision)


def prepare(work: Path, model: Path, parts: dict[str, list[dict[str, str]]]) -> None:
    """ft's HDF5 files and mlx-lm's prompt/completion JSONL, from the same rows."""
    from ft_data.prepare import PrepareOptions, prepare_dataset

    data = work / "mlx_lm_data"
    data.mkdir()
    for split, rows in parts.items():
        source = work / f"{split}.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        prepare_dataset(
            source,
            model,
            work / f"{split}.h5",
            PrepareOptions(max_length=MAX_LENGTH, on_too_long="truncate"),
        )
        with (data / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                prompt = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
                f.write(json.dumps({"prompt": prompt, "completion": r["output"]}) + "\n")


def bfloat16_copy(model: Path, out: Path) -> Path:
    """The model folder with its weights stored in bfloat16 (tokenizer and config as they are)."""
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    if out.exists():
        return out
    shutil.copytree(model, out)
    for weights in out.glob("*.safetensors"):
        tensors = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in load_file(weights).items()}
        save_file(tensors, weights, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def run_child(
    name: str, args: argparse.Namespace, work: Path, env: dict[str, str], precision: str
) -> dict:
    argv = [sys.executable, __file__, "--child", name, "--work", str(work)]
    argv += ["--examples", str(args.examples), "--batch", str(args.batch)]
    argv += ["--precision", precision]
    out_file, err_file = work / f"{name}.out", work / f"{name}.err"
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed:\n{err_file.read_text()[-3000:]}")
    lines = out_file.read_text().splitlines()
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    result["peak_rss_mib"] = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    return result


def report(
    results: dict[str, dict], args: argparse.Namespace, model: Path, mkl: bool, precision: str
) -> None:
    blas = "MKL (FT_MLX_MKL=1)" if mkl else "mlx[cpu] reference BLAS"
    if sys.platform == "darwin":
        blas = "Metal"
    print(f"\n== {precision} ==")
    print(
        f"model {args.model} ({args.layers} layers x {args.width} wide)"
        if args.model == "tiny"
        else f"model {model}"
    )
    print(f"{args.examples} examples once, batch {args.batch}, {blas}")
    print(
        f"{'trainer':<10} {'steps':>5} {'tokens':>7} {'train s':>8} {'tokens/s':>9} "
        f"{'MLX peak MiB':>12} {'RSS MiB':>8} {'val loss':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<10} {r['steps']:>5} {r['tokens']:>7} {r['seconds']:>8.1f} "
            f"{r['tokens_per_s']:>9.1f} {r['mlx_peak_bytes'] / 2**20:>12.1f} "
            f"{r['peak_rss_mib']:>8.0f} {r['val_loss']:>9.4f}"
        )
    ft, base = results["ft"], results["mlx_lm"]
    print(
        f"ratio ft / mlx-lm ({precision}): tokens/s {ft['tokens_per_s'] / base['tokens_per_s']:.2f}x, "
        f"MLX peak memory {ft['mlx_peak_bytes'] / base['mlx_peak_bytes']:.2f}x, "
        f"peak RSS {ft['peak_rss_mib'] / base['peak_rss_mib']:.2f}x"
    )


# ---- the children ------------------------------------------------------------------------------


def validation_loss(model: Any, work: Path) -> float:
    """The same code for both: summed token loss over the answers / trained tokens."""
    from ft_data.batches import Batches
    from ft_data.batches import target_count as trained_tokens
    from ft_data.hdf5 import PreparedDataset
    from ft_train_mlx.packing import model_inputs, summed_loss

    model.eval()
    total, count = 0.0, 0
    with PreparedDataset(work / "valid.h5") as data:
        for batch in Batches(
            data, batch_size=4, max_seq_length=MAX_LENGTH, shuffle=False
        ).iter_from(0, epochs=1):
            total += float(summed_loss(model, *model_inputs(batch)).item())
            count += trained_tokens(batch)
    return total / count


def child_ft(args: argparse.Namespace) -> dict:
    import mlx.core as mx

    import ft_train_mlx.trainer as trainer_module
    from ft_train_mlx import load_adapted, train

    work = args.work
    model = Path((work / "model_path").read_text())
    steps: list[dict] = []
    # reset the peak once the model is loaded (as for mlx-lm below): wrap the loader
    loader = trainer_module.load_mlx

    def load_then_reset(*a: Any, **k: Any) -> Any:
        loaded = loader(*a, **k)
        mx.eval(loaded[0].parameters())
        mx.reset_peak_memory()
        return loaded

    trainer_module.load_mlx = load_then_reset
    result = train(
        model,
        work / "train.h5",
        {
            "method": {
                "name": "lora",
                "rank": RANK,
                "alpha": ALPHA,
                "dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
            },
            "data": {"max_seq_length": MAX_LENGTH, "packing": True},
            "training": {
                "epochs": 1,
                "batch_size": max(1, args.batch // 2),
                "learning_rate": LR,
                "lr_scheduler": "constant",
                "warmup_steps": 0,
                "max_grad_norm": None,
                "seed": 0,
                "precision": args.precision,
            },
        },
        output_dir=work / "ft-run",
        callbacks=[lambda e: e["type"] == "step" and steps.append(e)],
    )
    peak = mx.get_peak_memory()
    seconds = sum(e["tokens"] / e["tokens_per_s"] for e in steps)
    tokens = sum(e["tokens"] for e in steps)
    trained, _ = load_adapted(model, result.adapter_path)
    return {
        "steps": len(steps),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "mlx_peak_bytes": peak,
        "val_loss": validation_loss(trained, work),
    }


def child_mlx_lm(args: argparse.Namespace) -> dict:
    import types

    import mlx.core as mx
    import numpy as np
    from mlx_lm import lora
    from mlx_lm.tuner.datasets import load_dataset
    from mlx_lm.tuner.trainer import TrainingCallback
    from mlx_lm.utils import load

    work = args.work
    model_path = Path((work / "model_path").read_text())
    iters = args.examples // args.batch
    settings = {
        **lora.CONFIG_DEFAULTS,
        "model": str(model_path),
        "train": True,
        "data": str(work / "mlx_lm_data"),
        "optimizer": "adamw",
        "optimizer_config": {"adamw": {"bias_correction": True, "weight_decay": 0.0}},
        "num_layers": -1,
        "batch_size": args.batch,
        "iters": iters,
        "val_batches": 1,
        "learning_rate": LR,
        "steps_per_report": iters,
        "steps_per_eval": 10**9,
        "save_every": 10**9,
        "adapter_path": str(work / "mlx-lm-adapter"),
        "max_seq_length": MAX_LENGTH,
        "mask_prompt": True,
        "lora_parameters": {
            "rank": RANK,
            "scale": ALPHA / RANK,
            "dropout": 0.0,
            "keys": ["self_attn.q_proj", "self_attn.v_proj"],
        },
    }
    ns = types.SimpleNamespace(**settings)
    model, tokenizer = load(str(model_path))
    train_set, valid_set, _ = load_dataset(ns, tokenizer)
    mx.eval(model.parameters())
    mx.reset_peak_memory()
    reports: list[dict] = []

    class Collect(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            reports.append(info)

    lora.train_model(ns, model, train_set, valid_set, training_callback=Collect())
    peak = mx.get_peak_memory()
    # non-padding tokens: one pass over the training rows (each batch once: iters x batch = rows)
    lengths = [len(train_set.process(train_set[i])[0]) for i in range(len(train_set))]
    tokens = int(np.sum(np.minimum(lengths, MAX_LENGTH)))
    trained_tokens = reports[-1]["trained_tokens"]  # the answers' tokens
    seconds = trained_tokens / reports[-1]["tokens_per_second"]
    return {
        "steps": iters,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "mlx_peak_bytes": peak,
        "val_loss": validation_loss(model, work),
    }


CHILDREN = {"ft": child_ft, "mlx_lm": child_mlx_lm}


if __name__ == "__main__":
    main()
