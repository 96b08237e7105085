"""ft's GGUF files against llama.cpp's own, on tiny models: metadata, tensors and K-quant bytes.

For each tiny model (ft-testing's, and the variants of packages/ft-export/tests/conftest.py:
Llama 3 rope scaling, YaRN, Phi-3 LongRoPE, Gemma 2, Gemma 3, a Llama wide enough for K-quants):

- llama.cpp's `convert_hf_to_gguf.py --outtype f32` and ft's f32 export are compared key by key
  (every `ARCH.*` key; general.* and tokenizer.* are left out: names and the tiny tokenizer's
  pre-tokenizer hash, which llama.cpp does not know and is told is `gpt2`) and tensor by tensor
  (names, shapes, types, values);
- with `llama-quantize` built from the same llama.cpp, its Q4_K_M, Q5_K_M and Q6_K of
  llama.cpp's f32 file are compared with ft's, tensor by tensor (type and bytes).

    uv run --no-sync python benchmarks/gguf_vs_llama_cpp.py --llama-cpp /path/to/llama.cpp

llama.cpp's folder is the llama-cpp-python sdist's vendor/llama.cpp (see bench_export.py), with
`build/bin/llama-quantize` for the K-quant part (`cmake -B build && cmake --build build
--target llama-quantize`, or benchmarks/llama_quantize_min.cpp built against libllama).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("llama", "qwen2", "phi3", "gpt2", "gemma", "llama-rope3", "qwen2-yarn")
MODELS += ("phi3-longrope", "gemma2", "gemma3", "llama-wide")
RECIPES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}

CONVERT = """
import sys
sys.path[:0] = [{folder!r}, {folder!r} + "/gguf-py"]
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt2"  # the tiny tokenizer is unknown
# the tiny models have a byte-level BPE tokenizer, not the SentencePiece model these expect
TextModel._set_vocab_sentencepiece = TextModel._set_vocab_gpt2
from conversion.phi import Phi3MiniModel
Phi3MiniModel.set_vocab = TextModel._set_vocab_gpt2
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", {model!r}, "--outtype", "f32", "--outfile", {out!r}]
convert_hf_to_gguf.main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp's source folder")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    quantize = args.llama_cpp / "build" / "bin" / "llama-quantize"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models:
            model = build(name, root)
            theirs = root / f"{name}-llama.cpp-f32.gguf"
            failed = convert(args.llama_cpp, model, theirs)
            if failed:
                print(f"{name}: llama.cpp's converter failed: {failed}", flush=True)
                continue
            ours = root / f"{name}-ft-f32.gguf"
            export(model, ours, "f32")
            print(f"{name}: f32 {compare_f32(ours, theirs)}", flush=True)
            if not quantize.is_file() or name not in ("llama-wide", "llama", "gemma3"):
                continue
            for recipe, ftype in RECIPES.items():
                quantized = root / f"{name}-llama.cpp-{recipe}.gguf"
                done = subprocess.run(
                    [str(quantize), str(theirs), str(quantized), ftype],
                    capture_output=True, text=True,
                )  # fmt: skip
                if done.returncode != 0:
                    print(f"{name}: llama-quantize {ftype} failed: {done.stderr[-500:]}")
                    continue
                mine = root / f"{name}-ft-{recipe}.gguf"
                export(model, mine, recipe)
                print(f"{name}: {recipe} {compare_bytes(mine, quantized)}", flush=True)
    if not quantize.is_file():
        print(f"no {quantize}: the K-quant comparison was left out")


def build(name: str, root: Path) -> Path:
    from ft_testing import ARCHITECTURES, build_tiny_model

    llama = root / "llama"
    if not llama.exists():
        build_tiny_model("llama", llama)
    if name in ARCHITECTURES and name not in ("gemma2", "gemma3"):
        return build_tiny_model(name, root / name) if name != "llama" else llama
    spec = importlib.util.spec_from_file_location(
        "ft_export_conftest", ROOT / "packages" / "ft-export" / "tests" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    (root / name).mkdir()
    return conftest.build_variant(llama, root / name, name)


def convert(folder: Path, model: Path, out: Path) -> str:
    """Run llama.cpp's converter; its last error line when it fails, else ''."""
    code = CONVERT.format(folder=str(folder), model=str(model), out=str(out))
    env = {**os.environ, "NO_LOCAL_GGUF": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return done.stderr.strip().splitlines()[-1] if done.returncode != 0 else ""


def export(model: Path, out: Path, gguf_type: str) -> None:
    from ft_export import ExportOptions, ExportSource, get_exporter, no_progress

    options = ExportOptions(quant=gguf_type, verify=False)
    get_exporter("gguf").export(ExportSource(model), out, options, no_progress)


def _fields(path: Path) -> dict[str, object]:
    from gguf import GGUFReader

    out: dict[str, object] = {}
    for key, field in GGUFReader(path).fields.items():
        if key.startswith(("general.", "tokenizer.", "GGUF.")):
            continue
        parts = [field.parts[i] for i in field.data]
        if field.types[0].name == "STRING" or (
            field.types[0].name == "ARRAY" and field.types[-1].name == "STRING"
        ):
            out[key] = [bytes(p).decode() for p in parts]
        else:
            out[key] = [round(float(v), 6) for p in parts for v in p.tolist()]
    return out


def compare_f32(ours: Path, theirs: Path) -> str:
    from gguf import GGUFReader

    a, b = _fields(ours), _fields(theirs)
    keys = sorted(b)
    differ = [k for k in keys if a.get(k) != b.get(k)]
    extra = sorted(set(a) - set(b))
    ta = {t.name: t for t in GGUFReader(ours).tensors}
    tb = {t.name: t for t in GGUFReader(theirs).tensors}
    tensors_differ = sorted(set(ta) ^ set(tb))
    for name in set(ta) & set(tb):
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            tensors_differ.append(f"{name} ({x.tensor_type.name} {list(x.shape)} vs "
                                  f"{y.tensor_type.name} {list(y.shape)})")  # fmt: skip
        elif not np.array_equal(np.asarray(x.data), np.asarray(y.data)):
            tensors_differ.append(f"{name} (values)")
    text = f"{len(keys) - len(differ)}/{len(keys)} of llama.cpp's keys equal, "
    text += f"{len(ta) - len(tensors_differ)}/{len(tb)} tensors equal"
    if extra:
        text += "; ft also writes: " + ", ".join(f"{k.split('.', 1)[1]} {a[k]}" for k in extra)
    if differ:
        text += "; keys differing: " + ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in differ)
    if tensors_differ:
        text += "; tensors differing: " + ", ".join(tensors_differ[:6])
    return text


def compare_bytes(ours: Path, theirs: Path) -> str:
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(ours).tensors}
    tb = {t.name: t for t in GGUFReader(theirs).tensors}
    same = [
        n for n in ta
        if n in tb and ta[n].tensor_type == tb[n].tensor_type
        and np.asarray(ta[n].data).tobytes() == np.asarray(tb[n].data).tobytes()
    ]  # fmt: skip
    differ = sorted((set(ta) | set(tb)) - set(same))
    kinds = sorted({ta[n].tensor_type.name for n in ta})
    text = f"{len(same)}/{len(tb)} tensors identical to llama-quantize's ({', '.join(kinds)})"
    if differ:
        text += "; differ: " + ", ".join(
            f"{n} ({ta[n].tensor_type.name if n in ta else '-'} vs "
            f"{tb[n].tensor_type.name if n in tb else '-'})"
            for n in differ[:6]
        )
    return text


if __name__ == "__main__":
    main()
