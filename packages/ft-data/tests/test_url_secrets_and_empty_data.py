"""Data URLs with credentials (query tokens, user:password@, passwords.yml's data_token) are
downloaded but never recorded or echoed; data with no usable row is an error naming its source."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest

from ft_config import redact_url
from ft_data.cache import INDEX_FILE, DatasetCache
from ft_data.errors import DataError
from ft_data.prepare import PrepareOptions, prepare_dataset

SECRET = "s3cr3t-T0ken-9f8e"
ROWS = "".join(
    json.dumps({"instruction": f"Say {word}.", "output": word}) + "\n"
    for word in ("one", "two", "three", "four")
)


@pytest.fixture
def guarded_server() -> Iterator[str]:
    """Serves /data.jsonl only with the secret: as a Bearer token, as Basic auth (user `me`),
    or as `?token=`; anything else is 401."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            basic = "Basic " + base64.b64encode(f"me:{SECRET}".encode()).decode()
            allowed = auth in (f"Bearer {SECRET}", basic) or self.path.endswith(f"token={SECRET}")
            if not allowed or not self.path.startswith("/data.jsonl"):
                self.send_error(401 if not allowed else 404)
                return
            body = ROWS.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def everything_written(folder: Path) -> bytes:
    """The bytes of every file under `folder`, HDF5 attributes included."""
    out = b""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out += path.read_bytes()
        if path.suffix == ".h5":
            with h5py.File(path) as file:
                out += repr(dict(file.attrs)).encode()
    return out


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("http://{host}/data.jsonl?token=" + SECRET, None),
        ("http://me:" + SECRET + "@{host}/data.jsonl", None),
        ("http://{host}/data.jsonl?token={{data_token}}", SECRET),  # passwords.yml's data_token
        ("http://{host}/data.jsonl", SECRET),  # the same, as a Bearer header
    ],
)
def test_credentials_in_a_data_url_are_used_but_never_recorded(
    guarded_server, tokenizer_dir, tmp_path, url, token
):
    url = url.format(host=guarded_server)
    cache = DatasetCache(tmp_path / "cache")
    result = cache.prepare(url, tokenizer_dir, PrepareOptions(), url_token=token)
    assert result.report.examples == 4
    assert SECRET.encode() not in everything_written(tmp_path / "cache")
    index = json.loads((tmp_path / "cache" / INDEX_FILE).read_text())["entries"]
    assert [entry["source"] for entry in index.values()] == [redact_url(url)]


@pytest.mark.parametrize(
    "url",
    [
        "http://{host}/data.jsonl?token=wrong-" + SECRET,
        "http://me:wrong-" + SECRET + "@{host}/data.jsonl",
    ],
)
def test_a_refused_download_never_echoes_the_credentials(
    guarded_server, tokenizer_dir, tmp_path, url
):
    url = url.format(host=guarded_server)
    with pytest.raises(DataError) as caught:
        prepare_dataset(url, tokenizer_dir, tmp_path / "out.h5")
    message = str(caught.value)
    assert SECRET not in message and SECRET not in repr(caught.value.__cause__)
    assert message.startswith(f"{redact_url(url)}: download failed: HTTP 401")
    assert "********" in message


def test_a_url_asking_for_a_token_that_is_not_set(guarded_server, tokenizer_dir, tmp_path):
    url = f"http://{guarded_server}/data.jsonl?token={{data_token}}"
    with pytest.raises(DataError, match=r"asks for \{data_token\}, and no data_token is set"):
        prepare_dataset(url, tokenizer_dir, tmp_path / "out.h5")


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("", "no usable rows: the data holds no rows"),
        (
            '{"instruction": "a", "output": ""}\n{"instruction": "b", "output": ""}\n',
            "no usable rows: all 2 rows were left out (invalid 2); row 1 of empty.jsonl: key "
            "'output': the field is empty; row 2 of empty.jsonl: key 'output': the field is empty",
        ),
    ],
)
def test_data_with_no_usable_row_is_an_error_naming_the_source(
    tokenizer_dir, tmp_path, content, what
):
    source = tmp_path / "empty.jsonl"
    source.write_text(content, encoding="utf-8")
    cache = DatasetCache(tmp_path / "cache")
    with pytest.raises(DataError) as caught:
        cache.prepare(source, tokenizer_dir, PrepareOptions(format="alpaca"))
    assert str(caught.value) == (
        f"{source}: {what}. Fix the rows, or give other data; `ft dataset stats` shows every "
        "row left out"
    )
    assert not list((tmp_path / "cache").glob("*.h5"))  # nothing cached under a hash
