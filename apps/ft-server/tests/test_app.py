"""The skeleton: /health, the one error shape, the OpenAPI docs."""

from __future__ import annotations

import os

from fastapi.testclient import TestClient

from ft_server import ServerSettings, create_app


def client(tmp_path, **settings) -> TestClient:
    from ft_config.paths import app_paths

    paths = app_paths({"FT_HOME": str(tmp_path / "home")})
    return TestClient(
        create_app(ServerSettings(paths=paths, **settings)), base_url="http://127.0.0.1"
    )


def test_health_answers_ok(tmp_path):
    with client(tmp_path) as c:
        r = c.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": "0.1.0"}


def test_unknown_route_is_a_404_in_the_one_error_shape(tmp_path):
    with client(tmp_path) as c:
        r = c.get("/api/nothing-here")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "no route GET /api/nothing-here; see /docs for the API",
            "type": "not_found_error",
            "param": None,
            "code": "not_found",
        }
    }


def test_openapi_docs_are_served(tmp_path):
    with client(tmp_path) as c:
        assert c.get("/docs").status_code == 200
        assert "/health" in c.get("/openapi.json").json()["paths"]


def test_serve_makes_openmp_threads_wait_passively_unless_the_user_said(tmp_path, monkeypatch):
    import uvicorn

    from ft_config.paths import app_paths
    from ft_server.main import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    settings = ServerSettings(paths=app_paths({"FT_HOME": str(tmp_path)}))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    serve(settings)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    serve(settings)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
