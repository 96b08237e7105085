"""The dashboard's pages and the API routes it added, without a browser (test_dashboard_browser.py
drives the pages in Chromium)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path

import pytest

from ft_config import ConfigError, json_schema, load_config
from ft_server import ServerSettings, create_app

STATIC = Path(__file__).parents[1] / "src" / "ft_server" / "static"
PAGES = ["/", "/jobs", "/models", "/datasets", "/config", "/exports", "/runs", "/chat"]


def test_pages_are_open_and_hold_no_data_while_the_api_needs_the_key(make_client):
    client = make_client(key="s3cret")
    client.headers.pop("Authorization")
    for page in [*PAGES, "/monitor/job-1", "/tune/job-1"]:
        r = client.get(page)
        assert r.status_code == 200, page
        assert r.headers["content-type"].startswith("text/html")
        assert 'id="api-key"' in r.text
    assert client.get("/static/dashboard.js").status_code == 200
    for route in ("/api/jobs", "/api/system", "/api/config/schema", "/v1/models"):
        assert client.get(route).status_code == 401, route
    # Only reading is open: a POST to a page path is still refused without the key.
    assert client.post("/").status_code == 401


def test_under_a_root_path_every_link_and_script_carries_it(app_home):
    from fastapi.testclient import TestClient

    settings = ServerSettings(paths=app_home, root_path="ft/")
    assert settings.root_path == "/ft"
    app = create_app(settings)
    # What uvicorn --root-path /ft hands the app for a request a proxy sent on as /config.
    with TestClient(app, base_url="http://127.0.0.1", root_path="/ft") as client:
        page = client.get("/ft/config")
        assert page.status_code == 200
        links = re.findall(r'(?:href|src)="((?!data:)[^"#]+)"', page.text)
        assert links and all(link.startswith("/ft/") for link in links), links
        assert 'data-base="/ft"' in page.text
        assert client.get("/ft/static/vendor/htmx-2.0.11.min.js").status_code == 200
        assert client.get("/ft/api/jobs").json() == {"jobs": []}
        assert client.get("/ft/health").json()["status"] == "ok"


def test_main_takes_root_path():
    from ft_server.main import parser

    assert parser().parse_args(["--root-path", "/ft"]).root_path == "/ft"


def test_the_config_form_has_one_labelled_field_per_setting_grouped_as_the_schema(make_client):
    page = make_client().get("/config").text
    schema = json_schema()["properties"]
    legends = re.findall(r"<legend>(\w+)</legend>", page)
    sections = [s for s, spec in schema.items() if s != "profile"]
    assert legends == ["general", *sections]
    for section in sections:
        spec = schema[section]
        obj = spec if "properties" in spec else next(o for o in spec["anyOf"] if "properties" in o)
        for name, field in obj["properties"].items():
            key = f"{section}.{name}"
            control = re.search(rf'id="(cfg-[^"]+)" name="{re.escape(key)}"', page)
            assert control, key
            if key == "tune.search_space":  # written by the search space editor's rows
                assert f'<input type="hidden" id="{control[1]}"' in page
                assert '<fieldset id="tune-space" aria-describedby="tune-space-help">' in page
                assert "<legend>Search space <code>tune.search_space</code></legend>" in page
                continue
            assert f'<label for="{control[1]}"' in page, key
            help_text = html.unescape(re.search(rf'id="{control[1]}-help">([^<]*)', page)[1])
            assert help_text.startswith(field["description"]), key
    # A setting with a default that may be none says how to write none.
    control = re.search(r'<input id="cfg-training-max-grad-norm"[^>]*>', page)[0]
    assert 'data-nullable="true"' in control
    help_text = re.search(r'id="cfg-training-max-grad-norm-help">([^<]*)', page)[1]
    assert help_text.endswith("Type null for none.")
    assert re.findall(r'<(?:input|textarea) id="(cfg-[^"]+)"[^>]*data-nullable', page) == [
        "cfg-training-max-grad-norm"
    ]


def test_validate_gives_ft_config_validate_s_messages(make_client):
    client = make_client()
    body = {
        "config": {
            "training": {"learning_rate": "fast"},
            "data": {"max_seq_length": 0},
            "modle": {},
        }
    }
    r = client.post("/api/config/validate", json=body).json()
    with pytest.raises(ConfigError) as expected:
        load_config("train.yml", text=r["yaml"])
    assert r["valid"] is False
    assert [p["text"] for p in r["problems"]] == str(expected.value).splitlines()
    assert {p["key"] for p in r["problems"]} == {
        "training.learning_rate",
        "modle",
    }
    ok = client.post("/api/config/validate", json={"config_yaml": "training:\n  max_steps: 3\n"})
    assert ok.json()["valid"] is True
    assert ok.json()["message"] == (
        "train.yml is valid (no profile; 1 settings differ from the defaults)"
    )
    assert ok.json()["values"] == {"training": {"max_steps": 3}}


def test_memory_estimate_of_a_catalog_model(make_client):
    body = {"config": {"data": {"max_seq_length": 256}, "training": {"batch_size": 2}}}
    r = make_client().post("/api/config/estimate", json=body)
    assert r.status_code == 200, r.text
    estimate = r.json()
    assert (estimate["model"], estimate["method"]) == ("smollm2-135m", "lora")
    assert (estimate["batch_size"], estimate["seq_len"]) == (2, 256)
    assert estimate["total_bytes"] == sum(estimate["breakdown"].values())
    assert estimate["fits"] == (estimate["total_bytes"] <= estimate["budget"]["usable_bytes"])


def test_system_reports_cpu_and_memory(make_client):
    s = make_client().get("/api/system").json()
    assert s["cpu_count"] >= 1
    assert 0 < s["ram_available_bytes"] <= s["ram_total_bytes"]
    assert s["memory_kind"] in ("RAM", "unified memory") or s["memory_kind"].startswith("GPU")


def test_edits_are_saved_as_a_new_version_and_the_old_one_is_kept(make_client, app_home):
    client = make_client()
    uploads = client.app.state.settings.uploads_dir
    uploads.mkdir(parents=True)
    rows = [{"text": f"row {i}"} for i in range(4)]
    (uploads / "notes-0123abcd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    listed = client.get("/api/datasets/notes-0123abcd.jsonl/rows", params={"offset": 1, "limit": 2})
    assert listed.json()["rows"] == [{"index": 1, "row": rows[1]}, {"index": 2, "row": rows[2]}]
    assert listed.json()["total"] == 4
    body = {"replace": {"0": {"text": "row zero"}}, "delete": [2]}
    r = client.post("/api/datasets/notes-0123abcd.jsonl/versions", json=body)
    assert r.status_code == 201, r.text
    saved = r.json()
    assert re.fullmatch(r"notes-v2-[0-9a-f]{8}\.jsonl", saved["name"])
    assert (saved["rows"], saved["replaced"], saved["deleted"]) == (3, 1, 1)
    new_rows = [json.loads(line) for line in (uploads / saved["name"]).read_text().splitlines()]
    assert new_rows == [{"text": "row zero"}, rows[1], rows[3]]
    old = (uploads / "notes-0123abcd.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in old] == rows
    # The next version of a version is v3 of the same stem.
    again = client.post(f"/api/datasets/{saved['name']}/versions", json={"delete": [0]}).json()
    assert again["name"].startswith("notes-v3-")
    bad = client.post("/api/datasets/notes-0123abcd.jsonl/versions", json={"delete": [9]})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "notes-0123abcd.jsonl has rows 0 to 3; no row 9"


def test_vendored_files_match_vendored_md():
    vendor = STATIC / "vendor"
    text = (vendor / "VENDORED.md").read_text()
    files = sorted(p.name for p in vendor.iterdir() if p.name != "VENDORED.md")
    for name in files:
        digest = hashlib.sha256((vendor / name).read_bytes()).hexdigest()
        assert f"`{name}`" in text, name
        assert digest in text, name
    for package in ("htmx.org", "uplot"):
        integrity = re.search(rf"{package}@[\d.]+.*?(sha512-[A-Za-z0-9+/=]+)", text, re.S)
        assert integrity, package
        base64.b64decode(integrity[1][7:])
    assert {"htmx-LICENSE.txt", "uPlot-LICENSE.txt"} <= set(files)
