"""`ft generate` and `ft chat` as a user runs them, on the tiny Llama.

The commands are invoked directly (their `ft.commands` entry points may not be registered in
this environment). What they print is checked against the library's own greedy answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ft_cli.chat_cmd import chat
from ft_cli.generate_cmd import generate
from ft_models.generate import GenerationOptions, Generator, load_template

QUESTION = "What is the capital of France?"
FAST = ("--backend", "torch", "--dtype", "float32")


def run(command, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(command, list(args), input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def library(tiny_llama: Path) -> Generator:
    return Generator.load(tiny_llama, backend="torch", dtype="float32")


def answer(generator: Generator, messages, max_tokens: int, **options) -> str:
    return generator.generate(messages, GenerationOptions(max_tokens=max_tokens, **options)).text


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(2)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_generate_streams_the_chat_answer_and_reports_speed(tiny_llama: Path, library) -> None:
    result = run(generate, str(tiny_llama), QUESTION, *FAST, "--max-tokens", "12")
    assert result.exit_code == 0, result.output
    expected = answer(library, [{"role": "user", "content": QUESTION}], 12)
    assert result.stdout == expected + "\n"
    assert "12 tokens, " in result.stderr and " tokens/s (prompt: " in result.stderr
    assert "finished: length" in result.stderr
    assert f"model: local folder {tiny_llama}" in result.stderr


def test_generate_json_raw_and_system(tiny_llama: Path, library) -> None:
    raw = run(
        generate, str(tiny_llama), "The capital", *FAST, "--raw", "--max-tokens", "8", "--json"
    )
    assert raw.exit_code == 0, raw.output
    record = json.loads(raw.stdout)
    expected = library.generate("The capital", GenerationOptions(max_tokens=8))
    assert record["text"] == expected.text
    assert record["tokens"] == list(expected.tokens)
    assert (record["finish_reason"], record["backend"], record["adapter"]) == (
        "length",
        "torch",
        None,
    )
    assert record["prompt_tokens"] == len(library.encode("The capital"))

    system = run(
        generate,
        str(tiny_llama),
        QUESTION,
        *FAST,
        "--system",
        "Be brief.",
        "--json",
        "--max-tokens",
        "8",
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    assert json.loads(system.stdout)["text"] == answer(library, messages, 8)


def test_generate_stop_and_sampling_options(tiny_llama: Path, library) -> None:
    full = answer(library, [{"role": "user", "content": QUESTION}], 30)
    stop = next(
        full[i : i + 2]
        for i in range(3, len(full))
        if full[i : i + 2].isascii()
        and full[i : i + 2].isalpha()
        and full.find(full[i : i + 2]) == i
    )
    result = run(generate, str(tiny_llama), QUESTION, *FAST, "--max-tokens", "30", "--stop", stop)
    assert result.stdout == full[: full.find(stop)] + "\n"
    assert f"finished: stop at {stop!r}" in result.stderr

    sampled = [
        run(
            generate,
            str(tiny_llama),
            QUESTION,
            *FAST,
            "--json",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--top-k",
            "40",
            "--seed",
            seed,
            "--max-tokens",
            "10",
        ).stdout
        for seed in ("1", "1", "2")
    ]
    texts = [json.loads(out)["tokens"] for out in sampled]
    assert texts[0] == texts[1] != texts[2]


def test_generate_with_an_adapter_and_with_a_run(
    tiny_llama: Path, adapter: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tuned = Generator.load(tiny_llama, backend="torch", dtype="float32", adapter=adapter)
    expected = answer(tuned, [{"role": "user", "content": QUESTION}], 10)
    direct = run(
        generate, str(tiny_llama), QUESTION, *FAST, "--adapter", str(adapter), "--max-tokens", "10"
    )
    assert direct.exit_code == 0, direct.output
    assert direct.stdout == expected + "\n"
    assert f"+ adapter {adapter}" in direct.stderr

    # A run folder as the trainer leaves it: run.json names the model, adapter/ holds the result,
    # config.yml the template it trained with.
    folder = tmp_path / "20260101-tiny-lora"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"model": {"path": str(tiny_llama)}}))
    (folder / "config.yml").write_text("data:\n  template: llama3\n  system_prompt: Be kind.\n")
    shutil.copytree(adapter, folder / "adapter")
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as a fresh process starts; another test may have hidden it
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_run = run(
            generate, "--run", str(folder), QUESTION, *FAST, "--json", "--max-tokens", "10"
        )
    assert from_run.exit_code == 0, from_run.output
    # With --json: the JSON alone on stdout, and no loading bars or deprecation warnings
    # (tqdm writes to the process's own stderr, which capfd sees).
    assert from_run.stderr == "" and capfd.readouterr() == ("", "")
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    with_template = Generator(tuned.lm, tuned.tokenizer, template=load_template("llama3"))
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": QUESTION}]
    record = json.loads(from_run.stdout)
    assert record["text"] == answer(with_template, messages, 10)
    assert record["adapter"] == str(folder / "adapter")


def test_generate_usage_errors(tiny_llama: Path, tmp_path: Path) -> None:
    only_prompt = run(generate, QUESTION)
    assert only_prompt.exit_code == 2
    assert "give MODEL and PROMPT" in only_prompt.output

    checkpoint = run(generate, str(tiny_llama), QUESTION, "--checkpoint", "best")
    assert checkpoint.exit_code == 2 and "--checkpoint needs --run" in checkpoint.output

    bad = run(generate, str(tiny_llama), QUESTION, "--temperature", "-1")
    assert bad.exit_code == 2 and "temperature must be >= 0" in bad.output

    missing = run(generate, str(tmp_path / "nowhere"), QUESTION)
    assert missing.exit_code == 1
    assert "no such file or folder" in missing.stderr

    no_adapter = run(generate, str(tiny_llama), QUESTION, *FAST, "--adapter", str(tmp_path))
    assert no_adapter.exit_code == 1
    assert f"adapter {tmp_path} has no adapter_config.json" in no_adapter.stderr

    template = run(generate, str(tiny_llama), QUESTION, *FAST, "--template", "nope")
    assert template.exit_code == 1 and "unknown chat template 'nope'" in template.stderr

    no_run = run(generate, "--run", "nope", QUESTION)
    assert no_run.exit_code == 1 and "error: " in no_run.stderr


def test_chat_keeps_history_and_obeys_commands(tiny_llama: Path, library) -> None:
    lines = [
        "hello",
        "and France?",
        "/reset",
        "/system Be brief.",
        "hi",
        "/bogus",
        "/exit",
        "never",
    ]
    result = run(chat, str(tiny_llama), *FAST, "--max-tokens", "6", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output

    first = answer(library, [{"role": "user", "content": "hello"}], 6)
    history = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "and France?"},
    ]
    second = answer(library, history, 6)
    third = answer(
        library, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], 6
    )
    out = result.stdout
    answers = [
        line.split("assistant: ", 1)[1] for line in out.splitlines() if "assistant: " in line
    ]
    assert answers == [first, second, third]
    assert "(conversation cleared)" in out
    assert "(system: Be brief.; conversation cleared)" in out
    assert "unknown command /bogus" in out


def test_chat_ends_cleanly_at_end_of_input_and_survives_a_long_prompt(tiny_llama: Path) -> None:
    too_long = "one two three " * 300  # beyond the tiny Llama's 512 positions
    stdin = f"{too_long}\nhi\n"
    result = run(chat, str(tiny_llama), *FAST, "--max-tokens", "4", "--stats", input=stdin)
    assert result.exit_code == 0, result.output
    assert "this model reads at most 512" in result.stdout
    assert result.stdout.count("assistant: ") == 1
    assert "4 tokens, " in result.stderr


def test_the_command_modules_import_no_backend() -> None:
    code = (
        "import sys, ft_cli.generate_cmd, ft_cli.chat_cmd, ft_models;"
        "print([m for m in ('torch', 'mlx', 'transformers', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_generate_compile_builds_the_step_once_and_later_runs_use_it(
    tiny_llama: Path, library, ft_home: Path
) -> None:
    from ft_models.generation.compiled_decode import compile_unavailable

    if compile_unavailable() is not None:
        pytest.skip(f"no compiled decode step here: {compile_unavailable()}")
    ask = (str(tiny_llama), "The capital", *FAST, "--raw", "--max-tokens", "12", "--json")
    expected = library.generate("The capital", GenerationOptions(max_tokens=12))

    def record(*extra: str) -> dict:
        result = run(generate, *ask, *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    # Nothing built yet: the default decodes eagerly in the static loop and builds nothing.
    plain = record()
    assert (plain["decode_step"], plain["tokens"]) == ("static", list(expected.tokens))
    assert not (ft_home / "compiled").exists()
    # ...and the terminal run says how to get the faster step.
    hint = "(eager decode step: `ft generate --compile` builds a compiled one once"
    assert hint in run(generate, *ask[:-1]).stderr
    # --compile builds the step for this model's shape, under ft's home, before the answer.
    built = run(generate, *ask[:-1], "--compile")
    assert built.exit_code == 0, built.output
    assert "building the compiled decode step for 256 positions" in built.stderr
    assert expected.text in built.stdout
    assert built.stderr.rstrip().endswith("; compiled decode step")
    packages = sorted((ft_home / "compiled").glob("*.pt2"))
    assert len(packages) == 1
    later = record()  # a later run finds it and decodes compiled, building nothing
    assert (later["decode_step"], later["tokens"]) == ("compiled", list(expected.tokens))
    assert sorted((ft_home / "compiled").glob("*")) == packages
    off = record("--no-compile")
    assert (off["decode_step"], off["tokens"]) == ("static", list(expected.tokens))
    assert hint not in run(generate, *ask[:-1]).stderr  # built: nothing to suggest
    assert hint not in run(generate, *ask[:-1], "--no-compile").stderr  # asked for eager
    # Built already: --compile builds nothing more, and the speed line says which step ran.
    again = run(generate, *ask[:-1], "--compile")
    assert "building" not in again.stderr
    assert again.stderr.rstrip().endswith("; compiled decode step")
    assert sorted((ft_home / "compiled").glob("*")) == packages
