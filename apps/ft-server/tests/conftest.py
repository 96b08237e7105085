from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ft_config.paths import AppPaths, app_paths
from ft_config.secrets import Secret
from ft_server import ServerSettings, create_app


@pytest.fixture
def app_home(tmp_path: Path) -> AppPaths:
    return app_paths({"FT_HOME": str(tmp_path / "home")})


@pytest.fixture
def make_client(app_home: AppPaths):
    """make_client(key=None, **settings) -> a TestClient on 127.0.0.1 (entered: lifespan runs)."""
    opened: list[TestClient] = []

    def make(key: str | None = None, **settings) -> TestClient:
        settings.setdefault("paths", app_home)
        app = create_app(ServerSettings(api_key=Secret(key) if key else None, **settings))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = TestClient(app, base_url="http://127.0.0.1", headers=headers)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)
