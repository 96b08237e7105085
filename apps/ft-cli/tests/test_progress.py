"""What `ft train` prints around its progress bar when the output is piped or captured (a log
file, CI, a script): no live redraws and no blank lines, the finished bar once."""

from __future__ import annotations

import io

from rich.console import Console

from ft_cli.progress import PrepareProgress, TrainDisplay


def test_piped_training_output_has_the_finished_bar_once_and_no_blank_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100, highlight=False)
    preparing = PrepareProgress(console)
    display = TrainDisplay(console, preparing=preparing)

    preparing("training", 12)
    console.print("training data: prepared")
    display({"type": "start", "total_steps": 2, "device": "cpu", "dtype": "float32"})
    display({"type": "step", "step": 1, "loss": 2.0, "learning_rate": 1e-3, "tokens_per_s": 10})
    display({"type": "message", "level": "warning", "text": 'pip install "ft-runs[wandb]"'})
    display({"type": "step", "step": 2, "loss": 1.0, "learning_rate": 5e-4, "tokens_per_s": 10})
    display({"type": "end"})
    preparing.stop()  # what `ft train` does once more on its way out
    display.progress.stop()
    console.print("completed")

    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "training data: prepared",
        "training on cpu (float32): 0 of 0 parameters trainable",
        '  pip install "ft-runs[wandb]"',  # brackets kept: library text is not rich markup
    ]
    assert lines[3].startswith("step 2/2 ") and " 100% loss 1.0000 " in lines[3]
    assert lines[4:] == ["completed"]


def test_in_a_terminal_the_spinner_ends_when_training_starts() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    preparing = PrepareProgress(console)
    display = TrainDisplay(console, preparing=preparing)

    preparing("training", 12)
    assert preparing.progress.live.is_started
    display({"type": "start", "total_steps": 2, "device": "cpu", "dtype": "float32"})

    # One live display at a time: rich would nest the bar in the spinner's region.
    assert not preparing.progress.live.is_started and display.progress.live.is_started
    display({"type": "end"})
    assert not display.progress.live.is_started


def test_each_evaluation_prints_its_answers_as_plain_text_on_one_line() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200, highlight=False)
    display = TrainDisplay(console)
    display({"type": "start", "total_steps": 2, "device": "cpu", "dtype": "float32"})
    display({"type": "eval", "step": 2, "eval_loss": 0.5, "perplexity": 1.65, "is_best": True})
    long = "word " * 40
    samples = [
        {"prompt": "p", "output": "I'm Pip [bold]from[/]\nLanternworks.", "reference": "r"},
        {"prompt": "p", "output": long, "reference": "r"},
    ]
    display({"type": "samples", "step": 2, "samples": samples})
    display({"type": "end"})
    lines = out.getvalue().splitlines()
    assert lines[1] == "  eval at step 2: loss 0.5000, perplexity 1.65 (best)"
    assert lines[2] == "    answer: I'm Pip [bold]from[/] Lanternworks."
    assert lines[3] == "    answer: " + " ".join(["word"] * 40)[:99] + "…"  # 100 characters
