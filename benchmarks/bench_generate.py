"""Benchmark: single-stream decoding of SmolLM2-135M-Instruct on the CPU, ft against llama.cpp.

- ft: `Generator.load` with the dtype ft picks for this machine (what `ft generate`, `ft chat`,
  evaluation and ft-server get), greedy, `GenerationResult.tokens_per_s` (decode only) and
  `prompt_tokens_per_s` as `ft generate --verbose` reports them; float32 and bfloat16 forced are
  shown beside it for context, with the eager static loop (`compile=False`). `--compiled` names
  the dtypes timed again with the compiled decode step (`compile=True`: what `ft chat` and
  `ft serve` build by default, `ft generate --compile` builds, and plain `ft generate` uses once
  it is built); the warm-up answer builds it (or loads it, built by an earlier run), and how
  long that took is printed apart.
- llama.cpp: llama-cpp-python **built from source** (PyPI's sdist, `-march=native` by its
  default `GGML_NATIVE`) in the benchmark's own virtual environment (`--llama-env`, made on the
  first run with uv; never in the project's lock), loading **ft's own f16 GGUF export** of the
  same weights. Same prompt token ids, same number of threads (torch's), greedy, decode timed
  from the first generated token to the last.

Both generate `--max-tokens` tokens after the same chat prompt (fewer if the model ends its
answer; the rate is per decoded token either way). After a warm-up run each, ft's and
llama.cpp's runs alternate (llama.cpp loaded once in its own process, run on request), so load
from anything else on the machine falls on both alike; `--repeat` runs each, median reported,
then the ratio ft / llama.cpp. The header prints the CPU's features: a ratio is
read within one run, never across machines.

    uv run python benchmarks/bench_generate.py [--max-tokens 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_features

PROMPT = "Write a short story about a robot who learns to paint."

LLAMA_RUN = r"""
import json, sys, time
from llama_cpp import Llama
spec = json.loads(sys.argv[1])
llm = Llama(model_path=spec["gguf"], n_ctx=1024, n_threads=spec["threads"],
            n_threads_batch=spec["threads"], verbose=False)
for line in sys.stdin:  # one run per line read, so the caller can interleave its own
    llm.reset()
    tokens, stamps = [], []
    started = time.perf_counter()
    for token in llm.generate(spec["ids"], temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        if token == llm.token_eos():
            break
        tokens.append(token)
        if len(tokens) == spec["max_tokens"]:
            break
    decode = stamps[len(tokens) - 1] - stamps[0] if len(tokens) > 1 else 0.0
    print(json.dumps({"tokens": tokens, "prompt_s": stamps[0] - started,
                      "tokens_per_s": (len(tokens) - 1) / decode if decode else 0.0}), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument(
        "--llama-env", type=Path, default=Path.home() / ".cache" / "ft-bench" / "llama-cpp-env",
        help="the virtual environment llama-cpp-python is built into (made when missing)",
    )  # fmt: skip
    parser.add_argument(
        "--dtypes", default="auto,float32,bfloat16", help="ft's dtypes to time (auto: ft's pick)"
    )
    parser.add_argument(
        "--compiled", default="auto,float32",
        help="ft's dtypes to time again with the compiled decode step ('' for none)",
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    from ft_models.generate import GenerationOptions, Generator
    from ft_models.resolve import resolve_model

    threads = torch.get_num_threads()
    print(f"cpu: {cpu_features()}; torch {torch.__version__}, {threads} threads")
    model = Path(resolve_model("smollm2-135m", progress=False).path)
    gguf = export_f16(model)

    options = GenerationOptions(max_tokens=args.max_tokens, temperature=0.0)
    generators = {}
    runs = [(d, False) for d in args.dtypes.split(",") if d]
    runs += [(d, True) for d in args.compiled.split(",") if d]
    for dtype, compiled in runs:
        generator = Generator.load(model, backend="torch", dtype=dtype, compile=bool(compiled))
        picked = str(generator.lm.model.dtype).removeprefix("torch.")
        label = f"ft {dtype} ({picked})" if dtype == "auto" else f"ft {dtype}"
        generators[label + (", compiled" if compiled else "")] = generator
    ids = next(iter(generators.values())).encode([{"role": "user", "content": PROMPT}])

    python = llama_python(args.llama_env)
    spec = {"gguf": str(gguf), "ids": ids, "threads": threads, "max_tokens": args.max_tokens}
    llama = subprocess.Popen(
        [str(python), "-c", LLAMA_RUN, json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert llama.stdin is not None and llama.stdout is not None

    def llama_run() -> dict:
        llama.stdin.write("go\n")
        llama.stdin.flush()
        line = llama.stdout.readline()
        if not line:
            sys.exit(f"llama.cpp failed (exit {llama.wait()})")
        return json.loads(line)

    # Warm up each side, then alternate them run by run: the machine's other load, if any,
    # falls on both alike.
    llama_run()
    compile_s = {}
    for label, generator in generators.items():
        started = time.perf_counter()
        generator.generate(ids, options)
        if generator.lm.compile:
            compile_s[label] = time.perf_counter() - started
            if generator.lm.compile_reason is not None:
                print(f"{label}: not compiled: {generator.lm.compile_reason}")
    llama_runs: list[dict] = []
    ft_runs: dict[str, list[tuple]] = {label: [] for label in generators}
    for _ in range(args.repeat):
        for label, generator in generators.items():
            result, paired = generator.generate(ids, options), llama_run()
            ft_runs[label].append((result, paired))
            llama_runs.append(paired)
    llama.stdin.close()
    llama.wait()
    ft_rows = list(ft_runs.items())
    llama_rate = statistics.median(r["tokens_per_s"] for r in llama_runs)
    llama_prompt = statistics.median(len(ids) / r["prompt_s"] for r in llama_runs)
    reference = llama_runs[0]["tokens"]

    print(f"model: {model}\ngguf (ft's f16 export): {gguf}")
    print(f"prompt: {len(ids)} tokens; up to {args.max_tokens} generated")
    print(
        f"median of {args.repeat} runs each, ft and llama.cpp alternated; the ratio is the median"
    )
    print("of each ft run's rate over the llama.cpp run right after it")
    print(f"\n{'run':<28} {'decode tok/s':>12} {'prompt tok/s':>12} {'x llama.cpp':>11} "
          f"{'tokens':>6} {'same tokens as llama.cpp':>25}")  # fmt: skip
    print(f"{'llama.cpp f16 GGUF':<28} {llama_rate:>12.1f} {llama_prompt:>12.1f} {1.0:>11.2f} "
          f"{len(reference):>6} {'':>25}")  # fmt: skip
    for label, pairs in ft_rows:
        rate = statistics.median(r.tokens_per_s for r, _ in pairs)
        prompt = statistics.median(r.prompt_tokens_per_s for r, _ in pairs)
        ratio = statistics.median(r.tokens_per_s / p["tokens_per_s"] for r, p in pairs)
        tokens = list(pairs[0][0].tokens)
        same = next(
            (i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b), None
        )
        agree = "all" if same is None else f"first {same}"
        print(f"{label:<28} {rate:>12.1f} {prompt:>12.1f} {ratio:>11.2f} "
              f"{len(tokens):>6} {agree:>25}")  # fmt: skip
    for label, seconds in compile_s.items():
        step = generators[label].lm.static()
        compiled = step.compiled if step is not None else None
        if compiled is None:
            continue
        how = ", ".join(
            f"{capacity}: {'built' if capacity in compiled.built else 'loaded'} in {took:.2f} s"
            for capacity, took in sorted(compiled.seconds.items())
        )
        print(f"{label}: the warm-up answer took {seconds:.1f} s; compiled step per cache size: "
              f"{how} (built once per model shape, loaded by later runs)")  # fmt: skip
    print("\ngoal: ft (the dtype ft picks) >= 0.80x llama.cpp's decode tokens/s; compiled is what")
    print("ft chat and ft serve run by default, and ft generate once the step is built")


def export_f16(model: Path) -> Path:
    """ft's f16 GGUF export of `model`, made once beside the benchmark's other files."""
    out = Path.home() / ".cache" / "ft-bench" / "smollm2-135m-ft-f16.gguf"
    if out.is_file() and out.stat().st_mtime > model.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    ft = shutil.which("ft") or str(Path(sys.executable).with_name("ft"))
    command = [ft, "export", str(model), "--format", "gguf", "--quant", "f16", "--no-verify"]
    subprocess.run([*command, "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def llama_python(env: Path) -> Path:
    """The Python of `env` with llama-cpp-python built from source (built now when missing:
    several minutes on two cores)."""
    python = env / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("uv is needed to build llama-cpp-python in its own environment: pip install uv")
    print(f"building llama-cpp-python from source into {env} (minutes) ...", flush=True)
    started = time.perf_counter()
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(env)], check=True)
    build = [uv, "pip", "install", "--python", str(python), "--no-binary", "llama-cpp-python"]
    environment = os.environ | {"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    subprocess.run([*build, "llama-cpp-python"], check=True, env=environment)
    print(f"built in {time.perf_counter() - started:.0f} s")
    return python


if __name__ == "__main__":
    main()
