"""A local server that speaks enough of the Hugging Face Hub's HTTP API for the unmodified
`huggingface_hub` client (and transformers through it) to run against it with `HF_ENDPOINT`.

Served, for model and dataset repos:

    GET  /api/models?search=&author=&filter=&pipeline_tag=&sort=&limit=&full=&expand=
    GET  /api/models/{repo_id}[/revision/{revision}][?blobs=true]     model_info, repo_info
    GET  /api/models/{repo_id}/tree/{revision}[/{path}][?recursive=]  list_repo_tree, list_repo_files
    GET  /api/models/{repo_id}/refs                                   list_repo_refs
    HEAD/GET /{repo_id}/resolve/{revision}/{filename}                 hf_hub_download (Range too)
    GET  /api/whoami-v2                                               whoami
    POST /api/repos/create                                            create_repo
    POST /api/validate-yaml                                           (a README's metadata, on upload)
    POST /api/models/{repo_id}/preupload/{revision}                   (upload_file, upload_folder)
    POST /api/models/{repo_id}/commit/{revision}                      create_commit

Uploads need a token the hub knows (one given to `add_repo`); every file is taken as a regular
(base64, in the commit) file, never LFS or Xet, which is enough for small test repos.

(`/api/datasets/...` and `/datasets/{repo_id}/resolve/...` the same.) Errors carry the
`X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`) that the
client turns into its typed exceptions. Files are always served straight from this server over
plain HTTP: no redirect to a CDN and no Xet headers (`X-Xet-Hash`, the `xet-auth` link), which is
what keeps the client from switching to its Xet download path.

Standard library only. Everything is held in memory; this is for small test repos.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from ft_testing.hub_repos import (
    HubFile,
    HubRepo,
    commit_sha,
    git_refs,
    read_files,
    repo_info,
    tree_entries,
)

_PLURAL = {"models": "model", "datasets": "dataset"}


class HubRequest(NamedTuple):
    """One request the server received: the method, the path with its query string, and the
    headers, their names lower-cased."""

    method: str
    path: str
    headers: dict[str, str]


class LocalHub:
    """An in-memory Hub on `http://127.0.0.1:{port}`, serving the repos given to `add_repo`.

    Use it as a context manager, or call `start()` and `stop()`. Every request is appended to
    `requests`, so a test can check what the client asked for (and what it did not).
    """

    def __init__(self) -> None:
        self.requests: list[HubRequest] = []
        self._repos: dict[tuple[str, str], HubRepo] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- repos --------------------------------------------------------------------------------

    def repo_keys(self) -> set[tuple[str, str]]:
        """(repo type, repo id) of every repo the Hub holds now."""
        with self._lock:
            return set(self._repos)

    def remove_repos(self, keys: set[tuple[str, str]]) -> None:
        """Forget these repos (those a test created by uploading, say)."""
        with self._lock:
            for key in keys:
                self._repos.pop(key, None)

    def add_repo(
        self,
        repo_id: str,
        files: Path | Mapping[str, bytes],
        *,
        revision: str = "main",
        repo_type: str = "model",
        private: bool = False,
        gated: bool = False,
        token: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        pipeline_tag: str | None = None,
        library_name: str | None = None,
        downloads: int = 0,
        likes: int = 0,
    ) -> str:
        """Create (or replace) the repo `repo_id` with `files` on its default branch `revision`;
        return the commit sha.

        `files` is a folder (every file under it, by relative path) or a mapping of repo paths to
        bytes. A `private` repo answers as if it did not exist (401 `RepoNotFound`) unless the
        request carries `Authorization: Bearer {token}`; a `gated` repo shows its metadata to
        anyone but serves files only with the token (401, then 403 for another known token,
        `GatedRepo`). The commit sha is derived from the repo, the revision and the content, so
        the same call always gives the same sha.
        """
        if repo_type not in _PLURAL.values():
            raise ValueError(f"repo_type must be 'model' or 'dataset', not {repo_type!r}")
        if (private or gated) and not token:
            raise ValueError(f"{repo_id}: a private or gated repo needs the token that opens it")
        metadata = {"tags": list(tags), "pipeline_tag": pipeline_tag, "library_name": library_name}
        metadata |= {"downloads": downloads, "likes": likes}
        repo = HubRepo(repo_id, repo_type, private, gated, token, metadata, default_branch=revision)
        with self._lock:
            self._repos[(repo_type, repo_id)] = repo
        return self.add_revision(repo_id, files, revision, repo_type=repo_type)

    def add_revision(
        self,
        repo_id: str,
        files: Path | Mapping[str, bytes],
        revision: str,
        *,
        tag: bool = False,
        repo_type: str = "model",
    ) -> str:
        """Point the branch (or, with `tag=True`, the tag) `revision` of an existing repo at a
        new commit holding `files`; return its sha. The commit is also reachable by its sha."""
        repo = self._repos[(repo_type, repo_id)]
        contents = read_files(files)
        sha = commit_sha(repo_type, repo_id, revision, contents)
        with self._lock:
            repo.commits[sha] = {path: HubFile.of(path, data) for path, data in contents.items()}
            repo.refs[revision] = sha
            (repo.tag_names.add if tag else repo.tag_names.discard)(revision)
        return sha

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit sha the branch or tag `revision` of `repo_id` points at."""
        return self._repos[(repo_type, repo_id)].refs[revision]

    # -- server -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint, `http://127.0.0.1:{port}`, for `HF_ENDPOINT`. Only while started."""
        if self._server is None:
            raise RuntimeError(
                "the LocalHub is not started: call start() or use it as a context manager"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalHub:
        """Serve on a free port of 127.0.0.1 from a daemon thread; return self."""
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.hub = self
            # A short poll interval, so that stop() returns at once rather than in half a second.
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.02,), name="ft-local-hub", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def clear_requests(self) -> None:
        """Forget the requests received so far."""
        self.requests.clear()

    def requests_for(self, method: str, path_prefix: str = "") -> list[HubRequest]:
        """The requests received with `method` (GET, HEAD) whose path starts with `path_prefix`."""
        return [
            r for r in list(self.requests) if r.method == method and r.path.startswith(path_prefix)
        ]

    # -- answering ----------------------------------------------------------------------------

    def _answer(self, method: str, target: str, headers: dict[str, str]) -> _Response:
        """Route one request. Runs on the server's threads."""
        split = urlsplit(target)
        query_lists = parse_qs(split.query)
        query = {key: values[-1] for key, values in query_lists.items()}
        parts = [unquote(part) for part in split.path.strip("/").split("/")]
        token = _bearer(headers)
        if token is not None and token not in self._known_tokens():
            # As the Hub does for any token it does not know, even on a public repo.
            return _error(401, None, "Invalid credentials in Authorization header")
        if parts[:2] == ["api", "whoami-v2"]:
            if token is None:
                return _error(401, None, "Invalid username or password.")
            return _json({"type": "user", "name": "ft-test", "auth": {"type": "access_token"}})
        if parts[0] == "api" and len(parts) >= 2 and parts[1] in _PLURAL:
            repo_type = _PLURAL[parts[1]]
            if len(parts) == 2:
                return _json(self._list_repos(repo_type, query_lists, token))
            return self._api(repo_type, parts[2:], query, token)
        repo_type = "dataset" if parts[0] == "datasets" else "model"
        rest = parts[1:] if parts[0] == "datasets" else parts
        repo, repo_id, rest = self._find_repo(repo_type, rest)
        if len(rest) < 3 or rest[0] != "resolve":
            return _error(501, None, f"ft's LocalHub does not serve {method} {split.path}")
        if denied := self._deny(repo, repo_id, token, files=True):
            return denied
        assert repo is not None
        sha = self._resolve_revision(repo, rest[1])
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
        file = repo.commits[sha].get("/".join(rest[2:]))
        if file is None:
            return _error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
        return _file_response(file, sha, headers.get("range"))

    def _post(self, target: str, headers: dict[str, str], body: bytes) -> _Response:
        """create_repo, preupload and commit: enough for `upload_folder` with small files."""
        parts = [unquote(part) for part in urlsplit(target).path.strip("/").split("/")]
        token = _bearer(headers)
        if token is None or token not in self._known_tokens():
            return _error(401, None, "Invalid credentials in Authorization header")
        if parts == ["api", "validate-yaml"]:
            # huggingface_hub checks a README's YAML front matter before it uploads one (model
            # cards: peft writes one beside every adapter). The Hub answers with what is wrong;
            # here nothing is.
            return _json({"errors": [], "warnings": []})
        if parts == ["api", "repos", "create"]:
            request = json.loads(body or b"{}")
            repo_type = request.get("type") or "model"
            name = request["name"]
            repo_id = f"{request['organization']}/{name}" if request.get("organization") else name
            if (repo_type, repo_id) in self._repos:
                return _error(409, None, "You already created this model repo")
            private = request.get("visibility") == "private" or bool(request.get("private"))
            self.add_repo(repo_id, {}, repo_type=repo_type, private=private, token=token)
            return _json({"url": f"{self.url}/{repo_id}", "name": repo_id})
        if len(parts) < 4 or parts[0] != "api" or parts[1] not in _PLURAL:
            return _error(501, None, f"ft's LocalHub does not serve POST {target}")
        repo_type = _PLURAL[parts[1]]
        repo, repo_id, rest = self._find_repo(repo_type, parts[2:])
        if denied := self._deny(repo, repo_id, token, files=True):
            return denied
        assert repo is not None
        if len(rest) < 2 or rest[0] not in ("preupload", "commit"):
            return _error(501, None, f"ft's LocalHub does not serve POST {target}")
        revision = "/".join(rest[1:])
        if rest[0] == "preupload":
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
            ]
            return _json({"files": modes})
        sha = self._resolve_revision(repo, revision)
        contents = {path: file.data for path, file in repo.commits[sha].items()} if sha else {}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                contents[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                contents.pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return _error(501, None, f"ft's LocalHub does not take {item['key']} operations")
        new_sha = self.add_revision(repo_id, contents, revision, repo_type=repo_type)
        return _json(
            {
                "commitUrl": f"{self.url}/{repo_id}/commit/{new_sha}",
                "commitOid": new_sha,
                "pullRequestUrl": None,
            }
        )

    def _api(
        self, repo_type: str, parts: list[str], query: dict[str, str], token: str | None
    ) -> _Response:
        repo, repo_id, rest = self._find_repo(repo_type, parts)
        if denied := self._deny(repo, repo_id, token, files=False):
            return denied
        assert repo is not None
        if rest == ["refs"]:
            return _json(git_refs(repo))
        if rest == [] or (len(rest) == 2 and rest[0] == "revision"):
            revision = rest[1] if rest else repo.default_branch
        elif len(rest) >= 2 and rest[0] == "tree":
            revision = rest[1]
        else:
            return _error(501, None, f"ft's LocalHub does not serve /api/.../{'/'.join(rest)}")
        sha = self._resolve_revision(repo, revision)
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if rest and rest[0] == "tree":
            entries = tree_entries(repo.commits[sha], "/".join(rest[2:]), _flag(query, "recursive"))
            if entries is None:
                return _error(404, "EntryNotFound", f"{'/'.join(rest[2:])} does not exist")
            return _json(entries)
        return _json(repo_info(repo, sha, siblings=True, blobs=_flag(query, "blobs")))

    def _list_repos(
        self, repo_type: str, query_lists: dict[str, list[str]], token: str | None
    ) -> list[dict[str, Any]]:
        """`list_models`/`list_datasets`: filtered, sorted (descending) and cut to `limit`."""
        with self._lock:
            repos = [repo for repo in self._repos.values() if repo.repo_type == repo_type]
        query = {key: values[-1] for key, values in query_lists.items()}
        filters = query_lists.get("filter", [])
        search, author = query.get("search", "").lower(), query.get("author")
        found = [
            repo
            for repo in repos
            if (not repo.private or token == repo.token)
            and search in repo.repo_id.lower()
            and (author is None or repo.repo_id.split("/")[0] == author)
            and all(tag in repo.metadata["tags"] for tag in filters)
            and query.get("pipeline_tag") in (None, repo.metadata["pipeline_tag"])
        ]
        sort = query.get("sort")
        if sort in ("downloads", "likes"):
            found.sort(key=lambda repo: (-repo.metadata[sort], repo.repo_id))
        found = found[: int(query["limit"])] if "limit" in query else found
        siblings = _flag(query, "full") or "siblings" in query_lists.get("expand", [])
        return [
            repo_info(repo, repo.refs[repo.default_branch], siblings=siblings, blobs=False)
            for repo in found
        ]

    def _find_repo(self, repo_type: str, parts: list[str]) -> tuple[HubRepo | None, str, list[str]]:
        """Split `namespace/name/rest...` (or `name/rest...`, for the Hub's old unnamespaced
        repos) into the repo, its id and the rest."""
        with self._lock:
            for size in (2, 1):
                repo = self._repos.get((repo_type, "/".join(parts[:size])))
                if repo is not None and len(parts) >= size:
                    return repo, repo.repo_id, parts[size:]
        return None, "/".join(parts[:2]), parts[2:]

    def _deny(
        self, repo: HubRepo | None, repo_id: str, token: str | None, *, files: bool
    ) -> _Response | None:
        """The error the Hub gives for this repo and token, or None if access is granted."""
        if repo is None or (repo.private and token != repo.token):
            # The Hub does not tell a private repo from a missing one: 401 without a token,
            # 404 with a token that does not open it.
            return _error(401 if token is None else 404, "RepoNotFound", "Repository not found")
        if repo.gated and files and token != repo.token:
            message = (
                f"Access to {repo.repo_type} {repo_id} is restricted. You must have access to it."
            )
            return _error(401 if token is None else 403, "GatedRepo", message)
        return None

    def _resolve_revision(self, repo: HubRepo, revision: str) -> str | None:
        with self._lock:
            if revision in repo.refs:
                return repo.refs[revision]
            if re.fullmatch(r"[0-9a-f]{7,40}", revision):
                matches = [sha for sha in repo.commits if sha.startswith(revision)]
                return matches[0] if len(matches) == 1 else None
        return None

    def _known_tokens(self) -> set[str]:
        with self._lock:
            return {repo.token for repo in self._repos.values() if repo.token}


# -- HTTP -------------------------------------------------------------------------------------


class _Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def _json(data: Any) -> _Response:
    return _Response(200, {"Content-Type": "application/json"}, json.dumps(data).encode())


def _error(
    status: int, code: str | None, message: str, extra: dict[str, str] | None = None
) -> _Response:
    headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
    if code is not None:
        headers["X-Error-Code"] = code
    return _Response(status, headers, json.dumps({"error": message}).encode())


def _file_response(file: HubFile, sha: str, range_header: str | None) -> _Response:
    headers = {
        "Content-Type": "application/octet-stream",
        "ETag": f'"{file.etag}"',
        "X-Repo-Commit": sha,
        "Accept-Ranges": "bytes",
    }
    total = len(file.data)
    if range_header is None:
        return _Response(200, headers, file.data)
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
    if match is None or match.groups() == ("", ""):
        return _error(416, None, f"Unsupported Range: {range_header}")
    start_text, end_text = match.groups()
    if start_text:
        start, end = int(start_text), min(int(end_text or total - 1), total - 1)
    else:  # bytes=-N: the last N bytes
        start, end = max(total - int(end_text), 0), total - 1
    if start > end:
        return _error(
            416,
            None,
            f"Range not satisfiable: {range_header}",
            {"Content-Range": f"bytes */{total}"},
        )
    headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    return _Response(206, headers, file.data[start : end + 1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, so stop() never waits on an idle keep-alive socket.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._respond("GET")

    def do_HEAD(self) -> None:
        self._respond("HEAD")

    def do_POST(self) -> None:
        self._respond("POST")

    def _respond(self, method: str) -> None:
        hub = self.server.hub
        headers = {name.lower(): value for name, value in self.headers.items()}
        hub.requests.append(HubRequest(method, self.path, headers))
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            response = hub._post(self.path, headers, self.rfile.read(length))
        else:
            response = hub._answer(method, self.path, headers)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `LocalHub.requests`; stderr stays quiet


# -- helpers ----------------------------------------------------------------------------------


def _flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("1", "true")


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
