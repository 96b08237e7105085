"""Inputs that lead nowhere or carry secrets, through `ft_runs.training.train` itself: data with
no usable row stops before a run exists; a data URL's credentials reach the download and nothing
the run records (run.json, the config snapshot, the store, the job a trainer receives)."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import ft_runs.training as training
from ft_data.errors import DataError
from ft_runs.store import JobStore
from ft_train_core.protocol import TrainResult

SECRET = "s3cr3t-T0ken-7c6d"
ROWS = "".join(
    json.dumps({"instruction": f"Say {word}.", "output": word}) + "\n"
    for word in ("one", "two", "three", "four", "five", "six", "seven", "eight")
)


def write_config(project: Path, model: Path, train: str) -> Path:
    config = project / "train.yml"
    config.write_text(
        f"model: {model}\n"
        f"data:\n  train: '{train}'\n  max_seq_length: 32\n  validation_split: 0\n"
        "training:\n  backend: torch\n  max_steps: 1\n",
        encoding="utf-8",
    )
    return config


def test_data_with_no_usable_row_stops_before_a_run_is_created(tmp_path, tiny_llama):
    (tmp_path / "empty.jsonl").write_text('{"instruction": "a", "output": ""}\n')
    config = write_config(tmp_path, tiny_llama, "empty.jsonl")
    with pytest.raises(DataError) as caught:
        training.train(config, say=lambda text: None)
    assert str(caught.value).startswith(
        f"{tmp_path / 'empty.jsonl'}: no usable rows: its one row was left out (invalid 1)"
    )
    assert not (tmp_path / "runs").exists()
    assert JobStore().list_runs() == []


@pytest.fixture
def guarded_data() -> Iterator[str]:
    """`http://host:port/data.jsonl`, served only to `Authorization: Bearer SECRET`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {SECRET}":
                self.send_error(401)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(ROWS.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data.jsonl"
    finally:
        server.shutdown()
        server.server_close()


def test_a_data_url_token_is_used_but_never_recorded(
    tmp_path, tiny_llama, guarded_data, monkeypatch, ft_home
):
    # The token comes from passwords.yml; a second credential sits in the URL's query string.
    passwords = tmp_path / "passwords.yml"
    passwords.write_text(f"data_token: {SECRET}\n")
    passwords.chmod(0o600)
    url = f"{guarded_data}?api_key={SECRET}-in-the-url"
    config = write_config(tmp_path, tiny_llama, url)
    received = []

    class Trainer:  # records the job a trainer is given; trains nothing
        def train(self, job, emit, should_stop):
            received.append(job)
            return TrainResult("completed", 1, None, None)

    monkeypatch.setattr(training, "get_trainer", lambda backend: Trainer())
    outcome = training.train(config, say=lambda text: None, overrides=[f"data.train={url}&x=1"])
    assert outcome.status == "completed"
    (job,) = received
    masked = f"{guarded_data}?api_key=********&x=1"
    assert job.config.data.train == masked
    written = b"".join(
        path.read_bytes() for path in sorted(outcome.folder.path.rglob("*")) if path.is_file()
    )
    assert SECRET.encode() not in written
    assert masked.encode() in written  # the config snapshot and run.json keep the masked URL
    with sqlite3.connect(JobStore().path) as db:
        dump = "\n".join(db.iterdump())
    assert SECRET not in dump and masked in dump
    cache = b"".join(p.read_bytes() for p in sorted(ft_home.rglob("*")) if p.is_file())
    assert SECRET.encode() not in cache
