"""Measure the peak memory of real torch training steps, to check `ft_models.memory`'s estimate.

Each measurement runs in a fresh Python process, so nothing an earlier model left in the
allocator counts. The child imports torch, transformers (and peft for LoRA/DoRA), loads the
model, builds the adapters and the optimizer, then runs `steps` training steps (forward,
backward, AdamW step) on random tokens, and reports its resident set size (RSS) at each stage.
On Linux the peak is the kernel's high-water mark (`VmHWM`), reset after loading through
`/proc/self/clear_refs`, so the loading peak does not count; elsewhere a thread samples RSS.

The CPU is the only device measured: CUDA has `torch.cuda.max_memory_allocated` for that.
This module imports nothing heavy itself; the child needs torch and transformers (and peft).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs

from ft_models.ram import peak_rss_bytes, rss_bytes


@attrs.frozen
class MeasuredPeak:
    """RSS of a training process, in bytes, at each stage of `measure_training_peak`."""

    baseline_bytes: int
    """After importing torch, transformers and peft: what the framework costs."""
    loaded_bytes: int
    """After loading the model and building the adapters and the optimizer."""
    peak_bytes: int
    """The highest RSS during the training steps."""
    step_seconds: float
    """Wall time of the last step."""
    parameters: int
    trainable_parameters: int


def measure_training_peak(
    model: Path,
    *,
    method: str = "lora",
    batch_size: int = 1,
    seq_len: int = 256,
    dtype: str = "float32",
    lora_rank: int = 8,
    lora_targets: str | list[str] = "all-linear",
    gradient_checkpointing: bool = False,
    steps: int = 2,
    timeout_s: float = 900,
) -> MeasuredPeak:
    """Run `steps` torch training steps of `model` (a Hugging Face folder or a `.gguf` file)
    on the CPU in a child process and return its RSS at each stage.

    `method` is full, lora or dora (LoRA alpha 2r, dropout 0.05, as ft's defaults); `dtype`
    float32 or bfloat16 (bfloat16: a frozen base in bfloat16 for LoRA, autocast over float32
    master weights for full). Raises RuntimeError with the child's error when it fails.
    """
    args = {
        "model": str(model),
        "method": method,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "dtype": dtype,
        "lora_rank": lora_rank,
        "lora_targets": lora_targets,
        "gradient_checkpointing": gradient_checkpointing,
        "steps": steps,
    }
    code = f"from ft_models.peak_memory import _child; _child({json.dumps(args)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"the measuring process failed (exit code {done.returncode}):\n{tail}")
    return MeasuredPeak(**json.loads(lines[-1]))


# -- the child process ------------------------------------------------------------------------


def _child(raw: str) -> None:
    args = json.loads(raw)
    peak = _PeakRss()
    import torch
    import transformers

    if args["method"] in ("lora", "dora"):
        import peft
    torch.manual_seed(0)
    baseline = rss_bytes()

    path = Path(args["model"])
    bf16 = args["dtype"] == "bfloat16"
    load_dtype = torch.bfloat16 if bf16 and args["method"] != "full" else torch.float32
    if path.suffix == ".gguf":
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=load_dtype
        )
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=load_dtype, use_safetensors=True
        )
    model.config.use_cache = False
    if args["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args["method"] in ("lora", "dora"):
        config = peft.LoraConfig(
            r=args["lora_rank"],
            lora_alpha=2 * args["lora_rank"],
            lora_dropout=0.05,
            target_modules=args["lora_targets"],
            use_dora=args["method"] == "dora",
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    vocab = model.config.vocab_size if hasattr(model.config, "vocab_size") else 512
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        ids = torch.randint(0, vocab, (args["batch_size"], args["seq_len"]), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and args["method"] == "full"):
            # Keep only the loss: holding the output object would keep the logits alive.
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _trim()
    loaded = rss_bytes()
    peak.reset()
    seconds = 0.0
    for _ in range(args["steps"]):
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
    result = {
        "baseline_bytes": baseline,
        "loaded_bytes": loaded,
        "peak_bytes": peak.read(),
        "step_seconds": round(seconds, 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
    }
    print(json.dumps(result), flush=True)


def _trim() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), so RSS means live."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _PeakRss:
    """The peak RSS since `reset()`: VmHWM on Linux, a sampling thread elsewhere."""

    def __init__(self) -> None:
        self._linux = Path("/proc/self/clear_refs").exists()
        self._max = 0
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        if self._linux:
            try:
                Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
                return
            except OSError:
                self._linux = False
        self._max = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            self._max = max(self._max, rss_bytes())
            time.sleep(0.002)

    def read(self) -> int:
        if self._linux:
            peak = peak_rss_bytes()
            assert peak is not None
            return peak
        return max(self._max, rss_bytes())
