"""`ft export` through the real CLI on run folders laid out as `ft train` writes them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ft_cli.main import cli


def build_adapter(base: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter on every linear layer of `base` with random, non-zero A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def ft(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def adapters(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: Callable[[str], Path]
) -> list[Path]:
    root = tmp_path_factory.mktemp("cli-adapters")
    base = tiny_model_factory("llama")
    return [build_adapter(base, root / f"a{seed}", seed) for seed in (0, 1)]


@pytest.fixture
def run(tmp_path: Path, tiny_llama: Path, adapters: list[Path]) -> Path:
    """A run folder as the torch trainer leaves it: config.yml, run.json (model path, data
    template), the final adapter, and a checkpoint at step 2 holding another adapter."""
    from ft_config import ModelConfig, TrainConfig
    from ft_models.checkpoint import write_checkpoint
    from ft_runs.run_folder import RunFolder

    config = TrainConfig(model=ModelConfig(name=str(tiny_llama)))
    folder = RunFolder(tmp_path / "runs" / "20261126-000000-llama-lora").create(
        config,
        {
            "model": {"name": str(tiny_llama), "path": str(tiny_llama), "kind": "local"},
            "data": {"template": "chatml", "format": "openai"},
            "backend": "torch",
        },
    )
    shutil.copytree(adapters[0], folder.adapter)
    with write_checkpoint(folder.checkpoints / "step-00000002", step=2) as temp:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(adapters[1] / name, temp / name)
    return folder.path


def test_export_a_run_to_gguf(run: Path) -> None:
    from gguf import GGUFReader

    from ft_data.templates import get_template

    code, out = ft("export", str(run), "--format", "gguf", "--quant", "q8_0")
    assert code == 0, out
    path = run / "exports" / "gguf-q8_0" / "20261126-000000-llama-lora-q8_0.gguf"
    assert f"wrote gguf export: {path.parent}" in out
    assert "check: passed: reloaded with gguf-py GGUFReader + dequantize" in out
    assert "every tensor within its type's error: yes" in out
    assert "chat template kept: yes" in out
    assert "time: export " in out and " s, check " in out  # the check timed apart
    # the template the run's data was prepared with (chatml), not the tokenizer's own
    field = GGUFReader(path).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == get_template("chatml").source


def test_output_ending_in_gguf_is_the_file_and_full_check(run: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    code, out = ft("export", str(run), "--format", "gguf", "-o", str(target), "--check", "full")
    assert code == 0, out
    assert target.is_file()
    assert f"wrote gguf export: {target}\n  model.gguf  " in out
    assert "check: passed: reloaded with transformers (from_pretrained(gguf_file=...))" in out
    assert "greedy tokens 8/8 identical" in out
    code, out = ft("export", str(run), "--format", "gguf", "-o", str(target))
    assert code == 1 and "model.gguf already exists: choose another -o/--output" in out


def test_a_checkpoint_of_a_run(run: Path, tiny_llama: Path, adapters: list[Path]) -> None:
    import torch
    from safetensors.torch import load_file

    from ft_export import ExportSource
    from ft_export.merge import merged_model

    code, out = ft("export", str(run), "--checkpoint", "2", "--format", "hf", "-o", str(run / "x"))
    assert code == 0, out
    assert "check: passed" in out
    saved = load_file(str(run / "x" / "model.safetensors"))
    expected, _ = merged_model(ExportSource(tiny_llama, (adapters[1],)))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(saved[name], expected.state_dict()[name])  # step 2's adapter, merged

    code, out = ft("export", str(run), "--checkpoint", "7", "--format", "hf")
    assert code == 1
    assert "has no checkpoint at step 7; it has: step-00000002" in out


def test_a_model_with_an_adapter_without_the_check(
    tiny_llama: Path, adapters: list[Path], tmp_path: Path
) -> None:
    out_dir = tmp_path / "peft"
    code, out = ft(
        "export", str(tiny_llama), "--adapter", str(adapters[0]), "--format", "peft",
        "-o", str(out_dir), "--no-verify",
    )  # fmt: skip
    assert code == 0, out
    assert "check: skipped (--no-verify)" in out
    assert (out_dir / "adapter_model.safetensors").read_bytes() == (
        adapters[0] / "adapter_model.safetensors"
    ).read_bytes()


def test_merge_adapters(adapters: list[Path], tiny_llama: Path, tmp_path: Path) -> None:
    a, b = (str(p) for p in adapters)
    args = ("--base", str(tiny_llama), "--format", "peft", "--combination", "ties")
    code, out = ft("export", "--merge-adapters", a, b, "--weights", "0.5,0.5", *args,
                   "-o", str(tmp_path / "ties"))  # fmt: skip
    assert code == 0, out
    assert "note: combined 2 adapters with ties (weights 0.5, 0.5, density 0.5)" in out
    assert "check: passed" in out
    code, out = ft("export", "--merge-adapters", a, b, "--weights", "1", *args)
    assert code == 1 and "--weights has 1 numbers for 2 adapters" in out
    code, out = ft("export", a, b, "--format", "peft")
    assert code == 1 and "pass one RUN or MODEL, or --merge-adapters" in out


def test_a_failed_check_exits_non_zero(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ft_export.gguf_convert.permute_qk", lambda weights, n_head: weights)
    code, out = ft("export", str(run), "--format", "gguf", "--quant", "f16")
    assert code == 1
    assert "check: FAILED" in out
    assert "error: the export failed its check (files kept in" in out


def test_unknown_format(run: Path) -> None:
    code, out = ft("export", str(run), "--format", "onnx")
    assert code == 1
    assert "unknown export format 'onnx': choose one of gguf, gguf-lora, hf, mlx" in out


def test_push_to_hub(
    run: Path, hub_env: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi

    monkeypatch.chdir(tmp_path)  # no passwords.yml here: the token comes from $HF_TOKEN
    code, out = ft("export", str(run), "--format", "peft", "--push-to-hub", "ft-test/run-adapter")
    assert code == 1 and "needs a Hugging Face token" in out
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    shutil.rmtree(run / "exports")
    code, out = ft("export", str(run), "--format", "peft", "--push-to-hub", "ft-test/run-adapter")
    assert code == 0, out
    assert "pushed to ft-test/run-adapter:" in out
    files = HfApi().list_repo_files("ft-test/run-adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(files)
    config = json.loads((run / "exports" / "peft-float32" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_a_full_fine_tune_run_is_the_model(
    run: Path, tiny_model_factory: Callable[[str], Path]
) -> None:
    # method full: the run's adapter/ folder is a whole model (here: another architecture, so
    # the export can only have come from it and not from run.json's base model)
    shutil.rmtree(run / "adapter")
    shutil.copytree(tiny_model_factory("qwen2"), run / "adapter")
    code, out = ft("export", str(run), "--format", "gguf", "--quant", "f32")
    assert code == 0, out
    assert "check: passed: reloaded with gguf-py" in out and "error 0.00e+00" in out
    from gguf import GGUFReader

    [path] = (run / "exports" / "gguf-f32").iterdir()
    field = GGUFReader(path).fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "qwen2"


def test_a_project_jinja_template_travels_with_the_export(run: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (project / "mine.jinja").write_text(template)
    info = json.loads((run / "run.json").read_text())
    info["config_path"] = str(project / "train.yml")
    info["data"]["template"] = "mine.jinja"
    (run / "run.json").write_text(json.dumps(info))
    code, out = ft("export", str(run), "--format", "peft", "--no-verify", "-o", str(tmp_path / "o"))
    assert code == 0, out
    assert (tmp_path / "o" / "chat_template.jinja").read_text() == template
    # --template overrides what training used
    code, out = ft(
        "export", str(run), "--format", "peft", "--template", "llama3", "-o", str(tmp_path / "p")
    )
    assert code == 0, out
    assert "<|start_header_id|>" in (tmp_path / "p" / "chat_template.jinja").read_text()
    assert "check: passed" in out and "chat template kept: yes" in out
