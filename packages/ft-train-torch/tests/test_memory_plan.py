"""The plan's memory estimate against a real run: packed rows of 2,048 tokens, 4 to a
micro-batch, LoRA on every linear layer (the chat profile's adapter), measured as the peak
resident memory of a training process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ft_config.structure import structure_config, unstructure_config
from ft_data.prepare import PrepareOptions, prepare_dataset
from ft_train_core.batch_plan import DatasetSize
from ft_train_core.plan import MemoryBudget, make_plan, model_shape

pytestmark = pytest.mark.slow


def _wider_llama(tiny_llama: Path, folder: Path) -> Path:
    """The tiny Llama's tokenizer on a model wide enough that activations, not the framework,
    make most of a 4 x 2,048-token step's memory."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    shutil.copytree(tiny_llama, folder)
    (folder / "model.safetensors").unlink()
    config = LlamaConfig.from_pretrained(tiny_llama)
    config.hidden_size, config.intermediate_size = 256, 704
    config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads = 4, 8, 4
    config.head_dim, config.max_position_embeddings = 32, 4096
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_estimate_is_within_a_quarter_of_the_measured_peak(tmp_path, tiny_llama, shared_datasets):
    model = _wider_llama(tiny_llama, tmp_path / "model")
    train = tmp_path / "train.h5"
    prepare_dataset(
        shared_datasets / "alpaca_en_demo.json", model, train, PrepareOptions(max_length=2048)
    )
    settings = {
        "data": {"max_seq_length": 2048, "packing": True},
        "method": {"name": "lora", "rank": 16, "alpha": 32, "dropout": 0.05},
        "training": {"batch_size": 4, "max_steps": 2, "precision": "fp32", "save_every": 100},
        "resources": {"device": "cpu"},
        "logging": {"tensorboard": False},
    }
    config, problems = structure_config(settings)
    assert config is not None and not problems
    plan = make_plan(
        config,
        DatasetSize.of(train),
        model_shape(model),
        budget=MemoryBudget(10**12, "test"),
        device="cpu",
        precision="fp32",
    )
    assert (plan.batch.row_length, plan.batch.micro_batch) == (2048, 4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = {
        "config": unstructure_config(config),
        "model_path": str(model),
        "train_data": str(train),
        "validation_data": None,
        "run_dir": str(run_dir),
        "plan": plan.batch.to_dict(),
        "events": str(run_dir / "events.jsonl"),
    }
    (run_dir / "job.json").write_text(json.dumps(job))
    # The trainer in a fresh process, which reports its own peak (VmHWM) when it is done.
    code = (
        "import sys; from ft_train_torch.launch import main; main([sys.argv[1]]); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(run_dir / "job.json")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peak = int(done.stdout.rsplit("VmHWM:", 1)[1].split()[0]) * 1024  # kB
    steps = [
        json.loads(line)
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if '"type": "step"' in line
    ]
    assert all(s["tokens"] > 0.99 * 8192 for s in steps)  # 4 nearly full rows of 2,048 tokens
    estimate = plan.estimate.total_bytes
    print(f"estimated {estimate / 1e9:.2f} GB, measured {peak / 1e9:.2f} GB")
    print(plan.estimate.describe())
    assert abs(estimate - peak) / peak < 0.25
