"""`ft chat MODEL`: an interactive chat in the terminal, with history, streamed answers.

Lines starting with `/` are commands: /reset, /system TEXT, /exit (and /help). Ctrl-D or
Ctrl-C at the prompt ends the chat; Ctrl-C during an answer stops that answer only.
"""

from __future__ import annotations

from typing import Any

import click

from ft_cli.generate_cmd import (
    build_options,
    load_for_generation,
    sampling_options,
    speed_line,
    stream_to_terminal,
)
from ft_cli.main import UserError

HELP = """commands:
  /reset        forget the conversation (keeps the system message)
  /system TEXT  set the system message (empty: none) and start over
  /exit         leave (or Ctrl-D)"""


class ChatSession:
    """The conversation so far: an optional system message and the turns after it."""

    def __init__(self, system: str | None) -> None:
        self.system = system or None
        self.turns: list[dict[str, str]] = []

    def messages(self, user: str | None = None) -> list[dict[str, str]]:
        start = [{"role": "system", "content": self.system}] if self.system else []
        end = [{"role": "user", "content": user}] if user is not None else []
        return [*start, *self.turns, *end]

    def add(self, user: str, answer: str) -> None:
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


@click.command()
@click.argument("model", required=False)
@sampling_options(max_tokens=512)
@click.option("--stats", is_flag=True, help="Print tokens/s after each answer.")
def chat(model: str | None, stats: bool, **params: Any) -> None:
    """Chat with MODEL in the terminal (or with a training run's model: --run RUN).

    \b
    MODEL: a model folder, a catalog alias (smollm2-135m), a Hub repo id or a .gguf file.
    In the chat: /reset, /system TEXT, /exit; Ctrl-D leaves.

    \b
    Examples:
      ft chat smollm2-135m
      ft chat --run last --system "Answer in French."
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.prompt import Prompt

    from ft_models.generate import GenerationError

    options = build_options(params)
    generator, system = load_for_generation(model, params, compile=True)
    if generator.template is None and not getattr(generator.tokenizer, "chat_template", None):
        raise UserError(
            "this model's tokenizer has no chat template: give one with --template "
            "(chatml, llama3, mistral, alpaca or a .jinja file), or use `ft generate --raw`"
        )
    warm = getattr(generator.lm, "warm", None)
    if warm is not None:
        warm()  # the decode step compiles while the user types; answers until then are eager
    session = ChatSession(system)
    console = Console(highlight=False)
    console.print("[dim]/reset, /system TEXT, /exit or Ctrl-D to leave[/dim]")
    while True:
        try:
            line = Prompt.ask("[bold green]you[/bold green]", console=console)
        except (EOFError, KeyboardInterrupt):
            console.print("")
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                session.turns.clear()
                console.print("[dim](conversation cleared)[/dim]")
            elif command == "/system":
                session.system, session.turns = argument.strip() or None, []
                shown = f"system: {session.system}" if session.system else "no system message"
                console.print(f"[dim]({escape(shown)}; conversation cleared)[/dim]")
            else:
                unknown = f"unknown command {command}\n" if command != "/help" else ""
                console.print(escape(unknown + HELP))
            continue
        try:
            stream = generator.stream(session.messages(text), options)
        except GenerationError as error:
            console.print(f"[red]error:[/red] {escape(str(error))}")
            continue
        console.print("[bold blue]assistant[/bold blue]: ", end="")
        result = stream_to_terminal(stream)
        if result is None:
            console.print("[dim](stopped; this turn is forgotten)[/dim]")
            continue
        session.add(text, result.text)
        if stats:
            click.echo(speed_line(result), err=True)
