"""The OpenAI routes without a model: the allow-list, the API key, and the 400s of requests the
server cannot honour (answered before anything is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ft_config.paths import app_paths
from ft_config.secrets import Secret
from ft_runs.store import JobStore
from ft_server import ServerSettings, create_app
from ft_server.served import served_models


def fake_run(store: JobStore, home: Path, run_id: str, base: Path, status: str) -> None:
    """A run of `base` with an adapter folder (the files the listing looks at, no weights)."""
    run_dir = home / "runs" / run_id
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    info = {"id": run_id, "model": {"name": str(base), "path": str(base)}}
    (run_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    store.create_run(run_id, run_dir=run_dir, config={}, model=str(base), method="lora")
    if status != "queued":
        store.finish_run(run_id, status)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    bases = [tmp_path / "base-a", tmp_path / "base-b"]
    for base in bases:
        base.mkdir()
        (base / "config.json").write_text("{}", encoding="utf-8")
    store = JobStore(app_paths({"FT_HOME": str(tmp_path)}).database)
    fake_run(store, tmp_path, "run-a1", bases[0], "completed")
    fake_run(store, tmp_path, "run-a2", bases[0], "failed")
    fake_run(store, tmp_path, "run-b1", bases[1], "completed")
    fake_run(store, tmp_path, "other-b2", bases[1], "completed")
    store.close()
    return tmp_path


def settings(home: Path, *allow: str, **more) -> ServerSettings:
    return ServerSettings(paths=app_paths({"FT_HOME": str(home)}), inference_allow=allow, **more)


def parents(home: Path, *allow: str) -> dict[str, str | None]:
    return {m.id: m.parent for m in served_models(settings(home, *allow)).values()}


def test_the_allow_list_decides_what_is_served(home: Path) -> None:
    a, b = str(home / "base-a"), str(home / "base-b")
    assert parents(home) == {}
    # a base model: itself and its completed runs (not the failed one)
    assert parents(home, a) == {a: None, "run-a1": a}
    # run ids and patterns: those runs, and their base as their parent
    assert parents(home, "run-*") == {"run-a1": a, a: None, "run-b1": b, b: None}
    assert parents(home, "*") == {
        "run-a1": a,
        a: None,
        "run-b1": b,
        b: None,
        "other-b2": b,
    }


def client(home: Path, *allow: str, **more) -> TestClient:
    return TestClient(create_app(settings(home, *allow, **more)), base_url="http://127.0.0.1")


def test_models_need_the_api_key_when_one_is_set(home: Path) -> None:
    with client(home, "run-a1", api_key=Secret("sesame")) as c:
        refused = c.get("/v1/models")
        listed = c.get("/v1/models", headers={"Authorization": "Bearer sesame"})
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == ["run-a1", str(home / "base-a")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tools": [{"type": "function"}]}, "tools: tool calling is not supported"),
        ({"n": 9}, "n: at most 8 choices per request"),
        ({"frequency_penalty": 0.5}, "frequency_penalty and presence_penalty are not supported"),
        ({"stream_options": {"include_usage": True}}, "stream_options: only with stream: true"),
        ({"temperature": 3}, "temperature: Input should be less than or equal to 2"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: at most 4 non-empty strings"),
        ({"response_format": {"type": "xml"}}, "response_format.type 'xml': choose text"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text"),
    ],
)
def test_requests_the_server_cannot_honour_are_400s(home: Path, change, message) -> None:
    body = {"model": "run-a1", "messages": [{"role": "user", "content": "hi"}], **change}
    with client(home, "run-a1") as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert message in r.json()["error"]["message"]


def test_an_unknown_model_is_a_404_that_lists_the_served_ones(home: Path) -> None:
    with client(home, "run-a1") as c:
        r = c.post("/v1/completions", json={"model": "gpt-4o", "prompt": "hi"})
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["message"].startswith("The model `gpt-4o` does not exist or is not served here.")
    assert "run-a1" in error["message"]
