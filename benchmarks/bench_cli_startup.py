"""Benchmark: how long `ft --help` takes, against mlx-lm's LoRA CLI (`python -m mlx_lm lora --help`).

Both are the first thing a user types. ft assembles its commands lazily and never imports torch,
mlx or transformers to show help; the baseline is the peer CLI as it ships. Reports the median
wall time and the peak memory of each over several runs, and the ratio (baseline / ft: above 1
means ft is faster or smaller).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

RUNS = 5


def measure(argv: list[str]) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MiB) of running `argv` RUNS times."""
    times, peaks = [], []
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed with exit code {proc.returncode}")
        peaks.append(
            usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
        )
    return statistics.median(times), max(peaks)


def main() -> None:
    ft = [sys.executable, "-c", "from ft_cli.main import main; main()", "--help"]
    baseline = [sys.executable, "-m", "mlx_lm", "lora", "--help"]
    ft_s, ft_mb = measure(ft)
    base_s, base_mb = measure(baseline)
    print(f"{'command':<34} {'median s':>9} {'peak MiB':>9}")
    print(f"{'ft --help':<34} {ft_s:>9.3f} {ft_mb:>9.1f}")
    print(f"{'python -m mlx_lm lora --help':<34} {base_s:>9.3f} {base_mb:>9.1f}")
    print(
        f"ratio (mlx_lm / ft): time {base_s / ft_s:.1f}x, memory {base_mb / ft_mb:.1f}x  ({RUNS} runs each)"
    )


if __name__ == "__main__":
    main()
