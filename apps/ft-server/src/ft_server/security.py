"""The guards every request passes before any route sees it (a plain ASGI middleware, so it
covers every router, streaming responses included):

1. Host header in the allow-list (against DNS rebinding), else 400.
2. The API key, when one is set, on every path but /health and the dashboard's pages and static
   files (they hold no data: the browser fetches it from the API with the key), else 401.
   Sent as `Authorization: Bearer KEY` (what OpenAI clients send) or `X-API-Key: KEY`.
3. The body size: a Content-Length past the limit is 413 before a byte is read; a chunked body
   is counted as it arrives and cut off at the limit with 413.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from ft_server.errors import error_body
from ft_server.settings import ServerSettings

OPEN_PATHS = frozenset({"/health"})
# The dashboard (ft_server.dashboard): page shells and their scripts, no data.
DASHBOARD_PATHS = frozenset(
    {"/", "/jobs", "/models", "/datasets", "/config", "/exports", "/runs", "/chat"}
)
DASHBOARD_PREFIXES = ("/static/", "/monitor/", "/tune/")
UPLOAD_PATHS = frozenset({"/api/datasets/upload"})

Scope = dict[str, Any]


class BodyTooLarge(Exception):
    """Raised inside `receive` when a streamed body passes the limit."""


class SecurityMiddleware:
    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = settings.host_allow_list()
        self.any_host = "*" in settings.allowed_hosts
        self.key = settings.api_key.reveal().encode() if settings.api_key is not None else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # the server has no websocket routes
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = _host_name(headers.get("host", ""))
        if not self.any_host and host not in self.hosts:
            await _reject(
                send,
                400,
                f"host {host or '(none)'!r} is not allowed; add it to the server's allowed hosts "
                "(--allowed-host) if you mean to reach the server by that name",
                "host_not_allowed",
            )
            return
        path = _route_path(scope)
        if scope.get("method") == "OPTIONS" and self._cors():
            await self.app(scope, receive, send)  # CORS preflight carries no credentials
            return
        if self.key is not None and not _is_open(scope, path) and not self._authorized(headers):
            await _reject(
                send,
                401,
                "missing or wrong API key: send `Authorization: Bearer <key>`",
                "invalid_api_key",
                {"www-authenticate": "Bearer"},
            )
            return
        limit = (
            self.settings.max_upload_bytes if path in UPLOAD_PATHS else self.settings.max_body_bytes
        )
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _reject(send, 400, "Content-Length is not a number", "bad_content_length")
                return
            if declared > limit:
                await _reject(send, 413, _too_large(limit), "body_too_large")
                return
        await self._guarded(scope, receive, send, limit)

    def _cors(self) -> bool:
        return bool(self.settings.cors_origins)

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.key is not None
        sent = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            sent = auth[7:].strip()
        return hmac.compare_digest(sent.encode(), self.key)

    async def _guarded(self, scope: Scope, receive: Any, send: Any, limit: int) -> None:
        seen = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reject(send, 413, _too_large(limit), "body_too_large")


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the root path (--root-path) when it is there."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


def _is_open(scope: Scope, path: str) -> bool:
    if path in OPEN_PATHS:
        return True
    return scope.get("method") in ("GET", "HEAD") and (
        path in DASHBOARD_PATHS or path.startswith(DASHBOARD_PREFIXES)
    )


def _too_large(limit: int) -> str:
    return f"request body is larger than the server's limit of {limit} bytes"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


async def _reject(
    send: Any, status: int, message: str, code: str, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
