"""The `ft-server` command (and what `ft serve` calls): parse options, check the bind rule,
run uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ft_server.settings import API_KEY_ENV, ServerSettings, SettingsError


def serve(settings: ServerSettings, *, log_level: str = "info") -> None:
    """Run the server until interrupted. Raises SettingsError when the bind is refused."""
    import uvicorn

    from ft_config.telemetry import switch_off_telemetry
    from ft_server.app import create_app

    switch_off_telemetry()  # ft sends none; nor may the libraries it loads (workers inherit it)
    # OpenMP threads that spin while they wait starve each other on a CPU shared with other
    # work: on the 2-core test machine under load, batched decoding ran 7-20x faster with
    # passive waiting (docs/server.md, Speed). Set before torch loads; the user's value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings.check_bind()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        # The proxy headers would let a client pick its own address; the server trusts none.
        proxy_headers=False,
        server_header=False,
        # Behind a proxy serving the app under a prefix: uvicorn puts it in each request's
        # root_path (and path), so links, the dashboard and the OpenAPI page carry it.
        root_path=settings.root_path,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ft-server",
        description="ft's REST API and OpenAI-compatible inference server. "
        f"Binds 127.0.0.1 unless an API key is set (passwords.yml api_key or ${API_KEY_ENV}).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--passwords", default=None, help="a passwords.yml holding api_key (default: none)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="a Host name clients may use besides loopback and --host (repeatable)",
    )
    p.add_argument(
        "--cors-origin", action="append", default=[], help="an origin allowed by CORS (repeatable)"
    )
    p.add_argument(
        "--max-concurrent-trainings", type=int, default=1, help="training jobs run at once"
    )
    p.add_argument(
        "--allow-model",
        action="append",
        default=[],
        help="a model the OpenAI-compatible routes may load: a base model name, a run id or a "
        "glob of run ids; '*' for every completed run (repeatable; default none)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "mlx"),
        default="auto",
        help="inference backend (default auto)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="the dtype served models compute in (default auto: on a CPU, bfloat16 where it "
        "decodes faster)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="requests to one model decoded together (continuous batching; default 8)",
    )
    p.add_argument(
        "--max-inference-queue",
        type=int,
        default=16,
        help="requests that may wait for a place in a batch; past it, 429 (default 16)",
    )
    p.add_argument(
        "--max-loaded-adapters",
        type=int,
        default=4,
        help="adapters kept loaded on their base model; the least recently used is unloaded "
        "past it (default 4)",
    )
    p.add_argument(
        "--allow-root",
        action="append",
        default=[],
        help="a folder besides the app home that clients may name (projects, data, models)",
    )
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=15.0,
        help="seconds between SSE heartbeats while a stream is idle (default 15)",
    )
    p.add_argument(
        "--root-path",
        default="",
        help="the path prefix a reverse proxy serves the server under, e.g. /ft (default: none)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = ServerSettings.from_environment(
            passwords=args.passwords,
            host=args.host,
            port=args.port,
            allowed_hosts=tuple(args.allowed_host),
            cors_origins=tuple(args.cors_origin),
            max_concurrent_trainings=args.max_concurrent_trainings,
            heartbeat_seconds=args.heartbeat_seconds,
            inference_allow=tuple(args.allow_model),
            inference_backend=args.backend,
            inference_dtype=args.dtype,
            max_batch_size=args.max_batch_size,
            max_inference_queue=args.max_inference_queue,
            max_loaded_adapters=args.max_loaded_adapters,
            allowed_roots=tuple(Path(p).resolve() for p in args.allow_root),
            root_path=args.root_path,
        )
        serve(settings, log_level=args.log_level)
    except SettingsError as exc:
        print(f"ft-server: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
