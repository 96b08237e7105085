"""`ft generate MODEL "prompt"`: stream a model's answer to the terminal.

The model is anything `ft_models.resolve.resolve_model` resolves (a folder, a catalog alias, a
Hub repo id, a `.gguf` file), or the model and adapter of a training run (`--run`). The shared
pieces (`sampling_options`, `load_for_generation`) serve `ft chat` too.

torch, mlx, transformers and peft are imported inside the command, through ft_models.generate.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ft_cli.main import UserError

log = logging.getLogger(__name__)


def sampling_options(max_tokens: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The model, adapter, run and sampling options `ft generate` and `ft chat` share."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option(
                "--adapter",
                type=click.Path(file_okay=False, path_type=Path),
                help="A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).",
            ),
            click.option(
                "--run",
                "run_ref",
                metavar="RUN",
                help="Use a training run's model and adapter: a run id (or prefix), `last`, or "
                "a run folder.",
            ),
            click.option(
                "--checkpoint",
                metavar="best|last|STEP",
                help="With --run: a checkpoint instead of the run's final adapter.",
            ),
            click.option(
                "--max-tokens",
                type=int,
                default=max_tokens,
                show_default=True,
                help="The most tokens to generate.",
            ),
            click.option(
                "--temperature",
                type=float,
                default=0.0,
                show_default=True,
                help="0 is greedy (reproducible); higher is more random.",
            ),
            click.option(
                "--top-p",
                type=float,
                default=1.0,
                show_default=True,
                help="Nucleus sampling: keep the most likely tokens up to this probability.",
            ),
            click.option(
                "--top-k",
                type=int,
                default=0,
                show_default=True,
                help="Keep only the k most likely tokens (0: all).",
            ),
            click.option(
                "--repetition-penalty",
                type=float,
                default=1.0,
                show_default=True,
                help="> 1 discourages tokens already used.",
            ),
            click.option(
                "--stop",
                "stops",
                multiple=True,
                metavar="TEXT",
                help="End the answer before this text (repeatable).",
            ),
            click.option("--seed", type=int, default=None, help="Seed for sampling."),
            click.option(
                "--backend",
                type=click.Choice(["auto", "torch", "mlx"]),
                default="auto",
                show_default=True,
                help="auto: MLX on Apple Silicon, else torch.",
            ),
            click.option(
                "--dtype",
                type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                default="auto",
                show_default=True,
                help="Compute dtype (auto: on a CPU bfloat16 where it decodes faster, else float32; bfloat16 on a GPU that has it; MLX keeps the saved one).",
            ),
            click.option(
                "--template",
                metavar="NAME|FILE",
                help="Chat template: the tokenizer's (default, or the run's), chatml, llama3, "
                "mistral, alpaca, or a .jinja file.",
            ),
            click.option("--system", metavar="TEXT", help="A system message."),
            click.option(
                "--compile/--no-compile",
                "compile_step",
                default=None,
                help="Compile the decode step (torch on a CPU, Llama-shaped models): built once "
                "per model shape and cache size (tens of seconds; kept under ft's home and "
                "loaded in a fraction of a second after), then each token faster. Default: ft "
                "chat builds it in the background while you type; ft generate uses it where "
                "built and never waits for a build (--compile builds it first).",
            ),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def build_options(params: dict[str, Any]) -> Any:
    """GenerationOptions from the command's parameters (an error for a bad value)."""
    from ft_models.generate import GenerationError, GenerationOptions

    try:
        return GenerationOptions(
            max_tokens=params["max_tokens"],
            temperature=params["temperature"],
            top_p=params["top_p"],
            top_k=params["top_k"],
            repetition_penalty=params["repetition_penalty"],
            stop=tuple(params["stops"]),
            seed=params["seed"],
        )
    except GenerationError as error:
        raise click.BadParameter(str(error)) from None


class RunWeights:
    """What a run contributes: the base model, an adapter or a full model, its template and
    system prompt."""

    def __init__(
        self, model: str, adapter: Path | None, template: str | None, system: str | None
    ) -> None:
        self.model, self.adapter, self.template, self.system = model, adapter, template, system


def _weights_kind(folder: Path) -> str | None:
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "model"
    return None


def weights_of_run(ref: str, checkpoint: str | None) -> RunWeights:
    """The model and adapter of run `ref`: its final adapter folder (or full model), or a
    checkpoint (`best`, `last`, a step)."""
    from ft_runs.run_folder import RunNotFoundError, find_run

    try:
        run = find_run(ref)
        folder = run.checkpoint(checkpoint) if checkpoint else run.adapter
        if not checkpoint and not folder.is_dir():
            folder = run.checkpoint("last")  # the run has not finished: its newest checkpoint
        info = run.info()
    except RunNotFoundError as error:
        raise UserError(str(error)) from None
    settings = run.settings()
    if run.task_of(settings) == "sequence-classification":
        raise UserError(
            f"run {run.id} trained a sequence classifier (model.task: sequence-classification): "
            f"it puts text into classes and does not generate text. Score it with `ft evaluate "
            f"{run.id}`; its adapter is {run.adapter}"
        )
    # A checkpoint may keep the weights one folder down, beside its training state.
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    found = next(((p, _weights_kind(p)) for p in candidates if _weights_kind(p)), None)
    if found is None:
        raise UserError(f"{folder} holds neither an adapter nor a model: is the run complete?")
    weights, kind = found
    model = str(info.get("model", {}).get("path") or "")
    if kind == "model":
        model, adapter = str(weights), None
    elif not model:
        raise UserError(f"{run.info_file} does not say which model the run trained")
    else:
        adapter = weights
    data = settings.get("data") or {}
    template, system = data.get("template"), data.get("system_prompt")
    return RunWeights(model, adapter, None if template == "auto" else template, system)


def load_for_generation(
    model: str | None,
    params: dict[str, Any],
    *,
    quiet: bool = False,
    compile: bool | str = "cached",
) -> tuple[Any, str | None]:
    """The Generator the command's parameters describe, and the system prompt to use;
    `compile` is what `--compile/--no-compile` means when neither is given.

    Only the answer (or the JSON) goes to stdout; what ft says about the model goes to stderr,
    and the libraries' loading bars and deprecation warnings are hidden."""
    from ft_cli.main import quiet_libraries
    from ft_models.device import DeviceError
    from ft_models.generate import GenerationError, Generator
    from ft_models.hub import ModelError
    from ft_models.load import ModelLoadError

    adapter, template, system = params["adapter"], params["template"], params["system"]
    if params["checkpoint"] and not params["run_ref"]:
        raise click.UsageError("--checkpoint needs --run")
    if params["run_ref"]:
        weights = weights_of_run(params["run_ref"], params["checkpoint"])
        model = model or weights.model
        adapter = adapter or weights.adapter
        template = template or weights.template
        system = system if system is not None else weights.system
    if not model:
        raise click.UsageError("give a MODEL (a folder, alias, Hub id or .gguf file) or --run RUN")
    dtype = None if params["dtype"] == "auto" else params["dtype"]
    quiet_libraries()
    started = time.perf_counter()
    try:
        generator = Generator.load(
            model,
            backend=params["backend"],
            adapter=adapter,
            dtype=dtype,
            template=template,
            progress=not quiet,
            compile=compile if params.get("compile_step") is None else params["compile_step"],
        )
    except (GenerationError, ModelError, ModelLoadError, DeviceError, ImportError) as error:
        raise UserError(str(error)) from None
    with_adapter = f" + adapter {generator.adapter}" if generator.adapter else ""
    log.info(
        "model: %s%s (loaded in %.1f s)", generator.reason, with_adapter,
        time.perf_counter() - started,
    )  # fmt: skip
    if not quiet:
        click.echo(f"model: {generator.reason}{with_adapter}", err=True)
    return generator, system


def speed_line(result: Any) -> str:
    """`20 tokens, 31.2 tokens/s (prompt: 14 tokens, 120.5 tokens/s); finished: length`."""
    return (
        f"{len(result.tokens)} tokens, {result.tokens_per_s:.1f} tokens/s "
        f"(prompt: {result.prompt_tokens} tokens, {result.prompt_tokens_per_s:.1f} tokens/s); "
        f"finished: {result.finish_reason}" + (f" at {result.stop!r}" if result.stop else "")
    )


def stream_to_terminal(stream: Any) -> Any:
    """Echo a GenerationStream's deltas as they come; return its result (None if stopped)."""
    try:
        for delta in stream:
            click.echo(delta, nl=False)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        click.echo("")
        return None
    click.echo("")
    return stream.result


@click.command()
@click.argument("args", nargs=-1, metavar="[MODEL] PROMPT")
@sampling_options(max_tokens=256)
@click.option(
    "--chat/--raw",
    "chat",
    default=None,
    help="Send the prompt as a chat message through the chat template (default when the model "
    "has one, or --template is given), or as raw text to continue.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
def generate(args: tuple[str, ...], chat: bool | None, as_json: bool, **params: Any) -> None:
    """Generate an answer to PROMPT with MODEL, streamed as it is written.

    \b
    MODEL: a model folder, a catalog alias (smollm2-135m), a Hub repo id or a .gguf file;
    leave it out with --run. PROMPT `-` reads standard input.

    \b
    Examples:
      ft generate smollm2-135m "What is the capital of France?"
      ft generate --run last "Summarize: ..." --max-tokens 100
      ft generate ./model "Once upon a time" --raw --temperature 0.8 --seed 1
    """
    from ft_models.generate import GenerationError

    if len(args) == 2:
        model, prompt = args
    elif len(args) == 1 and params["run_ref"]:
        model, prompt = None, args[0]
    else:
        raise click.UsageError(
            'give MODEL and PROMPT (ft generate MODEL "prompt"), or --run RUN and PROMPT'
        )
    if prompt == "-":
        prompt = sys.stdin.read()
    options = build_options(params)
    generator, system = load_for_generation(model, params, quiet=as_json)
    if chat is None:
        chat = generator.template is not None or bool(
            getattr(generator.tokenizer, "chat_template", None)
        )
    if not chat and params["system"]:
        raise click.UsageError("--system needs a chat prompt: drop --raw")
    messages = [{"role": "system", "content": system}] if system else []
    request: Any = [*messages, {"role": "user", "content": prompt}] if chat else prompt
    if params.get("compile_step") and hasattr(generator.lm, "build"):
        # --compile: build before the answer starts, so its speed line is the decoding's.
        def building(capacity: int) -> None:
            if not as_json:
                click.echo(
                    f"building the compiled decode step for {capacity} positions (once for "
                    "this model's shape; later runs load it)...",
                    err=True,
                )

        try:
            length = len(generator.encode(request)) + options.max_tokens
        except GenerationError as error:
            raise UserError(str(error)) from None
        generator.lm.build(length, building)
    try:
        stream = generator.stream(request, options)
        if as_json:
            text = "".join(stream)
            result = stream.result
            record = {
                "model": str(generator.model_path),
                "backend": generator.backend,
                "adapter": str(generator.adapter) if generator.adapter else None,
                "text": text,
                "tokens": list(result.tokens),
                "finish_reason": result.finish_reason,
                "stop": result.stop,
                "prompt_tokens": result.prompt_tokens,
                "tokens_per_s": result.tokens_per_s,
                "prompt_tokens_per_s": result.prompt_tokens_per_s,
                "decode_step": getattr(generator.lm, "decode_step", None),
            }
            click.echo(json.dumps(record, ensure_ascii=False))
            return
        result = stream_to_terminal(stream)
    except GenerationError as error:
        raise UserError(str(error)) from None
    if result is not None:
        compiled = getattr(generator.lm, "decode_step", None) == "compiled"
        click.echo(speed_line(result) + ("; compiled decode step" if compiled else ""), err=True)
        if params.get("compile_step") is None and getattr(generator.lm, "compile_pending", False):
            click.echo(
                "(eager decode step: `ft generate --compile` builds a compiled one once for "
                "this model's shape, and later runs use it)",
                err=True,
            )
