"""The application factory: `create_app(settings)` builds the FastAPI app with the guards
(ft_server.security), the one error shape (ft_server.errors), the REST routes and, when the
module is there, the OpenAI-compatible router of `ft_server.openai_api`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from ft_server.errors import install_error_handlers
from ft_server.security import SecurityMiddleware
from ft_server.settings import ServerSettings

log = logging.getLogger("ft_server")

VERSION = "0.1.0"


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The server's app. `settings` defaults to `ServerSettings()` (loopback, no key)."""
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for start in app.state.on_start:
            await start(app)
        try:
            yield
        finally:
            for stop in reversed(app.state.on_stop):
                await stop(app)

    app = FastAPI(
        title="ft-server",
        version=VERSION,
        description="ft's REST API (training jobs, datasets, models, metrics) and "
        "OpenAI-compatible inference.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Hooks run at startup / shutdown (async callables taking the app); routers add theirs.
    app.state.on_start = []
    app.state.on_stop = []
    install_error_handlers(app)

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness: always open (no API key needed), says nothing private."""
        return {"status": "ok", "version": VERSION}

    for name in _ROUTERS:
        _include(app, name)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    # Added last, so it runs first: nothing (CORS included) sees a request it refuses.
    app.add_middleware(SecurityMiddleware, settings=settings)
    return app


# Modules with a `router` (an APIRouter) and optionally `setup(app)`; a missing module is skipped,
# so the server starts while a part is still being built.
_ROUTERS = (
    "ft_server.jobs_api",
    "ft_server.data_api",
    "ft_server.tune_api",
    "ft_server.generate_api",
    "ft_server.openai_api",
    "ft_server.dashboard_api",
    "ft_server.dashboard",  # the web pages at / and their /static files
)


def _include(app: FastAPI, name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return
    setup = getattr(module, "setup", None)
    if setup is not None:
        setup(app)
    app.include_router(module.router)


def settings_of(request: Request) -> ServerSettings:
    """The settings of the app serving `request` (a FastAPI dependency)."""
    return request.app.state.settings
