"""Security on by default: the key, the Host allow-list, CORS, body limits, paths, the bind rule."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import Request

from ft_server.errors import ApiError
from ft_server.files import inside, safe_name
from ft_server.main import main
from ft_server.settings import ServerSettings, SettingsError

KEY = "k-3f9a1c77e2b04d5f"


def _routes(client) -> list[tuple[str, str]]:
    """Every (method, path) the app serves (from its OpenAPI schema: included routers are not
    in `app.routes` with this FastAPI), path parameters filled in."""
    found = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]
    for path, methods in client.app.openapi()["paths"].items():
        for method in methods:
            filled = re.sub(r"\{[^}]+\}", "x", path)
            found.append((method.upper(), filled))
    return found


def test_every_route_but_health_needs_the_key(make_client):
    client = make_client(KEY)
    client.headers.pop("Authorization")
    routes = _routes(client)
    assert len(routes) >= 25
    assert ("POST", "/api/training/start") in routes
    assert ("POST", "/api/datasets/upload") in routes
    assert ("GET", "/api/metrics/x/stream") in routes
    for method, path in routes:
        r = client.request(method, path)
        if path == "/health":
            assert r.status_code == 200, (method, path)
        else:
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]}, {"Authorization": KEY}, {}],
)
def test_a_wrong_or_missing_key_is_401(make_client, headers):
    client = make_client(KEY)
    client.headers.pop("Authorization")
    r = client.get("/openapi.json", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}])
def test_the_right_key_opens_the_api(make_client, headers):
    client = make_client(KEY)
    client.headers.pop("Authorization")
    assert client.get("/openapi.json", headers=headers).status_code == 200


def test_the_key_is_never_logged_or_printed(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(KEY)
    client.get("/openapi.json")
    client.get("/openapi.json", headers={"Authorization": "Bearer nope"})
    settings = client.app.state.settings
    assert KEY not in caplog.text
    assert KEY not in repr(settings)


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost.", ""])
def test_a_host_header_not_in_the_allow_list_is_refused(make_client, host):
    client = make_client()
    r = client.get("/health", headers={"Host": host})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "[::1]:9", "LOCALHOST:1"])
def test_loopback_host_headers_pass(make_client, host):
    assert make_client().get("/health", headers={"Host": host}).status_code == 200


def test_an_allowed_host_passes(make_client):
    client = make_client(KEY, allowed_hosts=("ft.lan",))
    assert client.get("/health", headers={"Host": "ft.lan:8000"}).status_code == 200


def test_no_cors_headers_unless_configured(make_client):
    r = make_client().get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = make_client(cors_origins=("http://app.example",)).get(
        "/health", headers={"Origin": "http://app.example"}
    )
    assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_an_oversized_body_is_413_before_it_is_read(make_client):
    client = make_client(max_body_bytes=1000)
    r = client.post("/api/training/start", content=b"x" * 1001)
    assert r.status_code == 413
    assert r.json()["error"] == {
        "message": "request body is larger than the server's limit of 1000 bytes",
        "type": "invalid_request_error",
        "param": None,
        "code": "body_too_large",
    }


def test_a_chunked_body_is_cut_off_at_the_limit(make_client):
    client = make_client(max_body_bytes=1000)
    read = []

    async def echo(request: Request) -> dict:
        body = await request.body()
        read.append(len(body))
        return {"read": len(body)}

    client.app.add_api_route("/echo", echo, methods=["POST"])

    def chunks():
        for _ in range(10):
            yield b"{" * 300

    r = client.post("/echo", content=chunks())
    assert r.status_code == 413
    assert read == []
    assert client.post("/echo", content=iter([b"x" * 600, b"y" * 400])).json() == {"read": 1000}


@pytest.mark.parametrize(
    "name", ["../x", "..", "a/b", "/etc/passwd", ".hidden", "a\\b", "x" * 200, "", "a\x00b"]
)
def test_names_that_could_leave_a_folder_are_refused(name):
    with pytest.raises(ApiError) as err:
        safe_name(name)
    assert err.value.status == 400


def test_paths_stay_inside_their_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "root", "a", "b") == (tmp_path / "root" / "a" / "b").resolve()
    for parts in (("..", "x"), ("/etc",), ("link", "secret")):
        with pytest.raises(ApiError):
            inside(tmp_path / "root", *parts)


def test_binding_beyond_loopback_needs_a_key(monkeypatch, capsys):
    for var in ("FT_SERVER_API_KEY", "FT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--host", "0.0.0.0", "--port", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to bind 0.0.0.0" in err
    assert "FT_SERVER_API_KEY" in err
    with pytest.raises(SettingsError):
        ServerSettings(host="192.168.1.5").check_bind()
    ServerSettings(host="::1").check_bind()


def test_the_key_comes_from_passwords_yml_or_the_environment(tmp_path):
    from ft_config.secrets import write_passwords_file

    passwords = tmp_path / "passwords.yml"
    write_passwords_file(passwords, {"api_key": "from-file-1234"})
    s = ServerSettings.from_environment(passwords=passwords, environ={"FT_HOME": str(tmp_path)})
    assert s.api_key.reveal() == "from-file-1234"
    s = ServerSettings.from_environment(
        environ={"FT_HOME": str(tmp_path), "FT_SERVER_API_KEY": "from-env-5678"}
    )
    assert s.api_key.reveal() == "from-env-5678"
    s.check_bind()  # with a key
    ServerSettings(host="0.0.0.0", api_key=s.api_key).check_bind()
