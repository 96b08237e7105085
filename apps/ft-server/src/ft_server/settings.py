"""How the server runs: where it binds, the API key, the host allow-list, size limits and the
app folders. `ServerSettings.from_environment()` reads the key from passwords.yml / env.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from ft_config.paths import AppPaths, app_paths
from ft_config.secrets import Secret, SecretsError, load_secrets

API_KEY_ENV = "FT_SERVER_API_KEY"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

MiB = 1024 * 1024


class SettingsError(ValueError):
    """The settings cannot be used; the message says why and what to do."""


@attrs.frozen(kw_only=True)
class ServerSettings:
    """Everything `create_app` needs. Build with `ServerSettings(...)` in tests,
    `ServerSettings.from_environment(...)` in the command line."""

    host: str = "127.0.0.1"
    port: int = 8000
    # The key every route but /health needs (None: no key, so only loopback may be bound).
    api_key: Secret | None = attrs.field(default=None, repr=False)
    # Host headers accepted (DNS rebinding guard); the port is ignored. The bound host and the
    # loopback names are always added. "*" accepts any host (only with an API key).
    allowed_hosts: tuple[str, ...] = ()
    # Origins allowed by CORS; empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    # Request bodies past this are refused with 413 before they are read (uploads: below).
    max_body_bytes: int = 4 * MiB
    max_upload_bytes: int = 2048 * MiB
    # Training jobs that run at once; the rest wait in the queue.
    max_concurrent_trainings: int = 1
    # Inference (ft_server.openai_api): what may be loaded, and the queue length past which 429.
    inference_allow: tuple[str, ...] = ()
    max_inference_queue: int = 16
    # Requests to one base model decoded together (continuous batching); more wait in the queue.
    max_batch_size: int = 8
    # Adapters kept loaded on their base model; past it the least recently used is unloaded.
    max_loaded_adapters: int = 4
    # The backend inference runs on: auto (MLX on Apple Silicon, else torch), torch or mlx.
    inference_backend: str = "auto"
    # The dtype served models compute in: auto (ft's pick: on a CPU, bfloat16 where it decodes
    # faster, docs/generation.md), float32, bfloat16 or float16.
    inference_dtype: str = attrs.field(
        default="auto",
        validator=attrs.validators.in_(("auto", "float32", "bfloat16", "float16")),
    )
    # Compile the decode step of served models (torch on a CPU, Llama-shaped models): at load,
    # in a background thread; a request meanwhile decodes eagerly. `ft serve` turns it on.
    inference_compile: bool = False
    # The app folders (models, datasets, database); FT_HOME moves them.
    paths: AppPaths = attrs.field(factory=app_paths)
    # Folders besides the app home that clients may name (projects, data files, model folders).
    allowed_roots: tuple[Path, ...] = ()
    # Seconds between SSE heartbeats while no metrics arrive.
    heartbeat_seconds: float = 15.0
    # The path prefix a reverse proxy serves the app under ("/ft"); "" when served at /.
    root_path: str = attrs.field(
        default="", converter=lambda p: "/" + p.strip("/") if p.strip("/") else ""
    )

    @property
    def runs_dir(self) -> Path:
        """Where runs started over the API put their run folders."""
        return self.paths.home / "runs"

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded datasets are stored (under the app's datasets folder)."""
        return self.paths.datasets / "uploads"

    def roots(self) -> tuple[Path, ...]:
        """Every folder a path sent by a client may lead into."""
        return (self.paths.home, *self.allowed_roots)

    def host_allow_list(self) -> frozenset[str]:
        hosts = {h.lower().strip("[]") for h in (*LOOPBACK_HOSTS, *self.allowed_hosts)}
        if self.host not in ("0.0.0.0", "::"):
            hosts.add(self.host.lower().strip("[]"))
        return frozenset(hosts)

    def check_bind(self) -> None:
        """Refuse to bind anything but loopback without an API key."""
        if self.api_key is None and not is_loopback(self.host):
            raise SettingsError(
                f"refusing to bind {self.host}: without an API key the server only listens on "
                f"127.0.0.1. Set api_key in passwords.yml (`ft secrets set api_key`) or "
                f"${API_KEY_ENV}, or bind 127.0.0.1."
            )
        if "*" in self.allowed_hosts and self.api_key is None:
            raise SettingsError(
                "allowed host '*' turns off the DNS-rebinding guard; it needs an API key"
            )

    @classmethod
    def from_environment(
        cls,
        *,
        passwords: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: object,
    ) -> ServerSettings:
        """Settings with the API key from `passwords` (a passwords.yml), `$FT_SERVER_API_KEY`
        or `$FT_API_KEY`, in that order; `overrides` set the other fields."""
        env = os.environ if environ is None else environ
        try:
            key = load_secrets(passwords, environ=env).get("api_key") if passwords else None
        except SecretsError as exc:
            raise SettingsError(str(exc)) from None
        if key is None and env.get(API_KEY_ENV):
            key = Secret(env[API_KEY_ENV])
        if key is None:
            key = load_secrets(None, environ=env).get("api_key")
        if "paths" not in overrides:
            overrides["paths"] = app_paths(env)
        return cls(api_key=key, **overrides)  # type: ignore[arg-type]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
