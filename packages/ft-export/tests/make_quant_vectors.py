"""Regenerate tests/data/quant-reference.safetensors: inputs chosen to reach every branch of
llama.cpp's reference quantizers, and what those quantizers (compiled from llama.cpp's C, see
make_quant_vectors.c) make of them.

    LLAMA=/path/to/llama.cpp  # with build/bin/libggml-base.so built
    gcc -O3 -std=gnu11 -I $LLAMA/ggml/include -I $LLAMA/ggml/src make_quant_vectors.c \\
        -L $LLAMA/build/bin -lggml-base -Wl,-rpath,$LLAMA/build/bin -o /tmp/make_quant_vectors
    uv run --no-sync python packages/ft-export/tests/make_quant_vectors.py /tmp/make_quant_vectors
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TYPES = ("q4_K", "q5_K", "q6_K", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
OUT = Path(__file__).parent / "data" / "quant-reference.safetensors"


def inputs() -> np.ndarray:
    """Rows of 512 float32 values (two super-blocks each), one kind of difficulty per row."""
    rng = np.random.default_rng(17)
    rows = []
    for scale in (0.02, 0.02, 0.02, 1.0, 300.0):
        rows.append(rng.standard_normal(512) * scale)  # weights as trained
    bf16 = (rng.standard_normal(512) * 0.05).astype(np.float32)  # a bfloat16 model's weights
    rows.append((bf16.view(np.uint32) & 0xFFFF0000).view(np.float32))
    rows.append(rng.standard_t(2, 512) * 0.01)  # heavy tails
    outliers = rng.standard_normal(512) * 0.01
    outliers[rng.integers(0, 512, 6)] = [3.0, -4.0, 2.5, -0.7, 5.0, -6.0]
    rows.append(outliers)
    rows.append(np.abs(rng.standard_normal(512)) * 0.03)  # all positive: the min clamps to 0
    rows.append(-np.abs(rng.standard_normal(512)) * 0.03)  # all negative
    rows.append(np.zeros(512))  # all-zero blocks (Q6_K's early exit, flat sub-blocks)
    rows.append(np.full(512, 0.125))  # constant
    rows.append(np.full(512, -0.5))
    one = np.zeros(512)
    one[[3, 300]] = [0.7, -0.2]
    rows.append(one)  # a single value per block
    rows.append(rng.standard_normal(512) * 1e-17)  # below GROUP_MAX_EPS
    mixed = rng.standard_normal(512) * 0.02
    mixed[32:64] = 0.0  # one zero sub-block in a live block
    mixed[256 + 16 : 256 + 32] = 0.0  # and one zero Q6_K sub-block
    rows.append(mixed)
    rows.append(np.round(rng.standard_normal(512) * 8) / 4)  # on a grid: rounding ties
    rows.append(np.linspace(-1, 1, 512))  # a ramp
    rows.append(rng.uniform(-1, 1, 512) ** 9)  # most values tiny, a few large
    rows.append(rng.standard_normal(512) * 60000.0)  # near the f16 limit
    return np.stack(rows).astype(np.float32)


def main() -> None:
    from safetensors.numpy import save_file

    binary = sys.argv[1]
    x = inputs()
    tensors = {"input": x}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "input.f32").write_bytes(x.tobytes())
        subprocess.run([binary, str(Path(tmp) / "input.f32"), tmp], check=True)
        for name in TYPES:
            data = np.frombuffer((Path(tmp) / f"{name}.bin").read_bytes(), dtype=np.uint8)
            tensors[name] = data.reshape(x.shape[0], -1).copy()
    save_file(
        tensors, str(OUT), metadata={"source": "llama.cpp ggml-quants.c *_ref, gcc -O3 x86-64"}
    )
    print(f"wrote {OUT}: {', '.join(f'{k} {v.shape}' for k, v in tensors.items())}")


if __name__ == "__main__":
    main()
