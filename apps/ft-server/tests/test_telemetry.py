"""The server, like every ft command, switches the libraries' telemetry off before it serves."""

from __future__ import annotations

import os

import pytest

from ft_server.main import serve
from ft_server.settings import ServerSettings


def test_serve_switches_telemetry_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    for name in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    served: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw["host"]))

    serve(ServerSettings())

    assert served == ["127.0.0.1"]
    assert [os.environ.get(n) for n in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK")] == ["1", "1"]
