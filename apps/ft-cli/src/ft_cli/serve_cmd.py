"""`ft serve`: start ft-server (the REST API and OpenAI-compatible inference), a separate
package: when it is not installed, say how to install it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

INSTALL_HINT = (
    "ft serve needs the ft-server package, which is not installed. Install it with\n"
    "  pip install ft-server        (or: uv pip install ft-server)\n"
    "and run `ft serve` again (or `ft-server`, its own command)."
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port.")
@click.option(
    "--passwords",
    default="passwords.yml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="passwords.yml holding api_key (used when it exists; $FT_SERVER_API_KEY works too).",
)
@click.option("--allowed-host", multiple=True, help="A Host name clients may use besides loopback.")
@click.option("--cors-origin", multiple=True, help="An origin allowed by CORS (none by default).")
@click.option(
    "--max-concurrent-trainings", default=1, show_default=True, type=int, help="Jobs run at once."
)
@click.option(
    "--allow-model",
    multiple=True,
    help="A model /v1 may load: a base model name, a run id or a glob of run ids; '*' for "
    "every completed run.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "mlx"]),
    default="auto",
    show_default=True,
    help="Inference backend.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="The dtype served models compute in (auto: on a CPU, bfloat16 where it decodes faster).",
)
@click.option(
    "--compile/--no-compile",
    "compile_step",
    default=True,
    show_default=True,
    help="Compile served models' decode step (torch on a CPU, Llama-shaped models): loaded "
    "at once where built before, else built in the background (tens of seconds, once per "
    "model shape); a request meanwhile decodes eagerly, and a lone request decodes faster after.",
)
@click.option(
    "--max-batch-size",
    default=8,
    show_default=True,
    type=int,
    help="Requests to one model decoded together (continuous batching).",
)
@click.option(
    "--max-inference-queue",
    default=16,
    show_default=True,
    type=int,
    help="Requests that may wait for a place in a batch; past it, 429.",
)
@click.option(
    "--max-loaded-adapters",
    default=4,
    show_default=True,
    type=int,
    help="Adapters kept loaded on their base model; past it the least recently used is unloaded.",
)
@click.option(
    "--allow-root",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder besides the app folder that clients may name (projects, data, models).",
)
@click.option(
    "--root-path",
    default="",
    help="The path prefix a reverse proxy serves the server under, e.g. /ft (default: none).",
)
def serve(
    host: str,
    port: int,
    passwords: Path,
    allowed_host: tuple[str, ...],
    cors_origin: tuple[str, ...],
    max_concurrent_trainings: int,
    allow_model: tuple[str, ...],
    backend: str,
    dtype: str,
    compile_step: bool,
    max_batch_size: int,
    max_inference_queue: int,
    max_loaded_adapters: int,
    allow_root: tuple[Path, ...],
    root_path: str,
) -> None:
    """Serve the REST API and OpenAI-compatible inference (binds 127.0.0.1 by default;
    binding anything else needs an API key)."""
    if importlib.util.find_spec("ft_server") is None:
        click.echo(INSTALL_HINT, err=True)
        sys.exit(1)
    from ft_server.main import serve as run_server
    from ft_server.settings import ServerSettings, SettingsError

    try:
        settings = ServerSettings.from_environment(
            passwords=passwords if passwords.exists() else None,
            host=host,
            port=port,
            allowed_hosts=allowed_host,
            cors_origins=cors_origin,
            max_concurrent_trainings=max_concurrent_trainings,
            inference_allow=allow_model,
            inference_backend=backend,
            inference_dtype=dtype,
            inference_compile=compile_step,
            max_batch_size=max_batch_size,
            max_inference_queue=max_inference_queue,
            max_loaded_adapters=max_loaded_adapters,
            allowed_roots=tuple(p.resolve() for p in allow_root),
            root_path=root_path,
        )
        run_server(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
