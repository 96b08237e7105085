"""Uploads, dataset list/preview/stats, model search and runs over HTTP."""

from __future__ import annotations

import json

import pytest

ROWS = [
    {"instruction": f"Name the colour number {i}.", "input": "", "output": f"Colour {i}."}
    for i in range(12)
]
GOOD = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


@pytest.fixture
def client(make_client, tiny_llama, tmp_path):
    return make_client(allowed_roots=(tiny_llama.parent,))


def upload(client, body: bytes, filename: str, **params):
    return client.post(
        "/api/datasets/upload", params={"filename": filename, **params}, content=body
    )


def test_an_upload_is_checked_like_ft_dataset_prepare_and_kept_under_a_server_name(
    client, tiny_llama
):
    r = upload(client, GOOD, "../../../etc/my train.jsonl", model=str(tiny_llama))
    assert r.status_code == 201, r.text
    out = r.json()
    name = out["name"]
    assert name.startswith("my-train-") and name.endswith(".jsonl") and "/" not in name
    assert out["size"] == len(GOOD)
    report = out["report"]
    assert (report["format"], report["rows_read"], report["examples"], report["left_out"]) == (
        "alpaca",
        12,
        12,
        0,
    )
    assert report["source"] == name
    folder = client.app.state.settings.uploads_dir
    assert sorted(p.name for p in folder.iterdir()) == [name]
    assert (folder / name).read_bytes() == GOOD

    assert [d["name"] for d in client.get("/api/datasets").json()["datasets"]] == [name]
    preview = client.get(f"/api/datasets/{name}/preview", params={"rows": 2}).json()
    assert preview["rows"] == ROWS[:2]
    assert preview["format"] == "alpaca"
    stats = client.get(f"/api/datasets/{name}/stats", params={"model": str(tiny_llama)})
    assert stats.status_code == 200, stats.text
    assert stats.json()["rows"]["examples"] == 12


def test_a_bad_upload_is_refused_with_where_and_not_kept(client, tiny_llama):
    bad = GOOD + b'{"instruction": "broken\n'
    r = upload(client, bad, "train.jsonl", model=str(tiny_llama))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_data"
    assert error["message"].startswith("train-")
    assert ".jsonl:13" in error["message"]
    assert str(client.app.state.settings.paths.home) not in error["message"]
    folder = client.app.state.settings.uploads_dir
    assert list(folder.iterdir()) == []


def test_upload_refusals(make_client, tiny_llama):
    client = make_client(allowed_roots=(tiny_llama.parent,), max_upload_bytes=100)
    assert upload(client, GOOD, "train.jsonl").status_code == 413
    r = upload(client, b"x", "payload.exe")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_format")
    r = upload(client, b"", "t.jsonl")
    assert r.status_code == 400
    # A model path outside the server's folders is not opened.
    r = upload(client, b"{}\n", "t.jsonl", model="/etc")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "path_outside")


@pytest.mark.parametrize("name", ["..", "..%2F..%2Fetc%2Fpasswd", ".part-x.jsonl", "nope.jsonl"])
def test_dataset_names_cannot_leave_the_uploads_folder(client, name):
    r = client.get(f"/api/datasets/{name}/preview")
    assert r.status_code in (400, 404)
    assert "error" in r.json()


def test_a_training_config_cannot_name_files_outside_the_server_folders(client):
    body = {"config": {"data": {"train": "/etc/passwd"}}}
    r = client.post("/api/training/start", json=body)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "data.train")
    r = client.post("/api/training/start", json={"config": {"data": {"train": "../../../x.jsonl"}}})
    assert r.status_code == 400
    r = client.post("/api/training/start", json={"project": "/"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "path_outside")
    r = client.post("/api/training/start", json={"config": {"training": {"max_stepz": 2}}})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_config")
    assert "max_stepz" in r.json()["error"]["message"]
    r = client.post("/api/training/start", json={"dataset": "../x"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_name")
    assert client.get("/api/jobs").json() == {"jobs": []}


def test_model_search_lists_the_catalog_the_cache_and_the_hub(client, hub_env):
    r = client.get("/api/models/search", params={"q": "tiny"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [m["repo_id"] for m in out["hub"]] == ["ft-test/tiny-llama"]
    assert out["hub_error"] is None
    catalog = client.get("/api/models/search", params={"q": "smollm2-135m", "hub": False}).json()
    assert "smollm2-135m" in [m["alias"] for m in catalog["catalog"]]
    assert catalog["hub"] == []
    assert all(isinstance(m["fits"], bool) for m in catalog["catalog"])
    small = client.get("/api/models/search", params={"max_params": "1M", "hub": False}).json()
    assert small["catalog"] == []
    r = client.get("/api/models/search", params={"max_params": "lots"})
    assert r.status_code == 400


def test_runs_and_evaluations(client):
    from ft_runs.store import JobStore

    store = JobStore(client.app.state.settings.paths.database)
    store.create_run(
        "r1", run_dir=client.app.state.settings.runs_dir / "r1", config={}, model="m", method="lora"
    )
    store.add_evaluation("r1", checkpoint="final", data="test.jsonl", metrics={"loss": 1.5})
    runs = client.get("/api/runs").json()["runs"]
    assert [(r["id"], r["status"]) for r in runs] == [("r1", "queued")]
    evaluations = client.get("/api/runs/r1/evaluations").json()["evaluations"]
    assert [(e["checkpoint"], e["metrics"]) for e in evaluations] == [("final", {"loss": 1.5})]
    r = client.get("/api/runs/nope")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "run_not_found")


def test_a_model_pull_runs_as_a_job_into_the_local_cache(make_client, hub_env):
    import time

    client = make_client()
    r = client.post("/api/models/pull", json={"model": "ft-test/tiny-llama"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 240
    while (job := client.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "completed", job
    assert job["result"]["repo_id"] == "ft-test/tiny-llama"
    assert job["result"]["bytes"] > 0
    local = client.get("/api/models/search", params={"q": "tiny", "hub": False}).json()["local"]
    assert [m["repo_id"] for m in local] == ["ft-test/tiny-llama"]
    for bad in ("../etc", "/abs/path", "a/b/c"):
        r = client.post("/api/models/pull", json={"model": bad})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_name")
