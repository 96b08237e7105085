"""ft-data's whole pipeline runs where torch, transformers, mlx and peft cannot be imported
(tests/test_standalone_install.py proves the wheel installs without them; this proves the
code paths never reach for them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import sys
for name in ("torch", "transformers", "mlx", "mlx_lm", "peft", "datasets"):
    sys.modules[name] = None  # importing any of them now raises ImportError

from ft_data import Batches, PreparedDataset, PrepareOptions, prepare_dataset
from ft_data.report import quality_report
from ft_data.tokenizer import load_tokenizer

data, tokenizer, out = sys.argv[1:4]
tok = load_tokenizer(tokenizer)
result = prepare_dataset(data, tok, out, PrepareOptions(max_length=4096, dedup="near"))
with PreparedDataset(result.path) as dataset:
    batch = Batches(dataset, batch_size=4, max_seq_length=4096, mode="pack").batch(0)
report = quality_report(data, tok, PrepareOptions(max_length=4096), eval_source=data)
counts = result.report.counts
print(result.report.examples, counts.get("duplicate"), counts.get("near_duplicate", 0), batch["input_ids"].shape[1], len(report.exact))
"""


def test_prepare_batches_and_checks_without_heavy_packages(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    data = datasets / "alpaca_en_demo.json"
    done = subprocess.run(
        [sys.executable, "-c", CODE, str(data), str(tokenizer_dir), str(tmp_path / "a.h5")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # The demo set's 14 repeats are exact; no other pair is 85% similar.
    assert [int(v) for v in done.stdout.split()] == [985, 14, 0, 4096, 14]
