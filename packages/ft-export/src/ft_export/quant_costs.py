"""What each GGUF type costs on the embedded SmolLM2-135M-Instruct: file size, and the relative
logits error over a 190-token passage against the bf16 model (read back by gguf-py).

Kept free of imports so `ft export --help` can show it without loading numpy or gguf. Measured
with `benchmarks/bench_quant_cost.py`; docs/export.md has the full table and its caveats (the
model's weights went through Q4_1 once, which flatters q4_1; its width, 576, makes llama.cpp's
K-quant recipes fall back to Q5_0/Q5_1/Q8_0 for most tensors).
"""

QUANT_COSTS: dict[str, str] = {
    "f32": "540 MB, exact",
    "f16": "271 MB, exact for a bf16 model",
    "bf16": "271 MB, exact for a bf16 model",
    "q8_0": "145 MB, error 0.022",
    "q6_k": "138 MB, error 0.047",
    "q5_k_m": "112 MB, error 0.17",
    "q5_1": "103 MB, error 0.23",
    "q5_0": "94 MB, error 0.18",
    "q4_k_m": "106 MB, error 0.13",
    "q4_1": "86 MB, error 0.096",
    "q4_0": "78 MB, error 0.46",
}
"""GGUF type -> its size and error on SmolLM2-135M-Instruct."""


def quant_help() -> str:
    """`--quant`'s help for GGUF: each type with its cost."""
    return "; ".join(f"{name} ({cost})" for name, cost in QUANT_COSTS.items())
