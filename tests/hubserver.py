"""Offline stand-ins for the Hugging Face Hub and for plain HTTP weight hosts.

Everything here runs the *real* client libraries (``huggingface_hub`` 2.4.0 on ``httpx2``,
``torch.hub`` on ``urllib``) against local servers on 127.0.0.1, so the download/upload code
paths are exercised end-to-end without touching the network.

Contents
--------
``HubServer``
    Minimal Hub-compatible HTTP server (``ThreadingHTTPServer`` in a daemon thread) with
    git-like commits. Implements the endpoints ``huggingface_hub`` 2.4.0 uses for
    ``create_repo`` / ``delete_repo`` / ``whoami`` / ``model_info`` / ``repo_info`` /
    ``list_repo_files`` / ``list_repo_tree`` / ``get_paths_info`` / ``create_branch`` /
    ``create_commit`` / ``upload_file`` / ``upload_folder`` / ``hf_hub_download`` /
    ``snapshot_download`` and ``PyTorchModelHubMixin.push_to_hub`` / ``from_pretrained``.
    Every upload is answered as a "regular" (inline base64) upload, never LFS/Xet.
``StaticFileServer``
    Serves a directory (GET/HEAD, Content-Length, 404) for ``torch.hub.load_state_dict_from_url``.
``patch_hf_environment`` / ``set_hf_offline``
    Point ``huggingface_hub`` at a given endpoint / cache, or switch offline mode, via monkeypatch.
``prefill_hf_cache`` / ``prefill_torch_hub_cache``
    Write the on-disk caches the libraries read, so loads succeed with no network at all.
Fixtures: ``hub_server``, ``hf_offline``, ``file_server``, ``torch_home``
    Import them into a conftest (``from hubserver import hub_server, ...``) or a test module.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

__all__ = [
    "FAKE_TOKEN",
    "DEFAULT_USER",
    "RecordedRequest",
    "HubServer",
    "StaticFileServer",
    "git_blob_sha1",
    "patch_hf_environment",
    "set_hf_offline",
    "prefill_hf_cache",
    "prefill_torch_hub_cache",
    "hf_cache_repo_dir",
    "unused_local_url",
    "hub_server",
    "hf_offline",
    "file_server",
    "torch_home",
]

FAKE_TOKEN = "hf_hubserver_fake_token_0123456789abcdef"
DEFAULT_USER = "test-user"

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{7,40}")
_REPO_TYPE_PREFIXES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_REPO_API_ACTIONS = {"revision", "tree", "preupload", "commit", "paths-info", "refs", "branch"}
_DEFAULT_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """Git blob id of ``data`` (what the Hub uses as ETag / oid for regular, non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def unused_local_url() -> str:
    """URL of a 127.0.0.1 port nothing listens on (connections are refused, never leave the host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------
# Shared HTTP plumbing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request received by a test server."""

    method: str
    path: str  # raw (percent-encoded) path, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased header names
    body: bytes

    @property
    def unquoted_path(self) -> str:
        return unquote(self.path)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None,
                 body: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.body = dict(body or {})


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # a keep-alive connection left open by a client does not pin a thread forever
    server_version = "hubserver-test/1.0"

    # Route every verb to the owning server object.
    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_HEAD(self):  # noqa: N802
        self._handle("HEAD")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_PUT(self):  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")

    def log_message(self, format, *args):  # noqa: A002 - silence stderr access log
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        owner: _BackgroundHTTPServer = self.server.owner  # type: ignore[attr-defined]
        body = self._read_body()
        raw_path, _, raw_query = self.path.partition("?")
        req = RecordedRequest(
            method=method,
            path=raw_path,
            query=parse_qs(raw_query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        owner._record(req)
        try:
            status, headers, payload = owner._dispatch(req)
        except _HTTPError as e:
            payload_obj = {"error": e.message, **e.body}
            status, payload = e.status, json.dumps(payload_obj).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
        except Exception as e:  # pragma: no cover - surfaced to the client as a 500
            msg = f"hubserver internal error: {type(e).__name__}: {e}"
            status, payload = 500, json.dumps({"error": msg}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": msg[:200]}
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(payload)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD" and payload:
            self.wfile.write(payload)


class _BackgroundHTTPServer:
    """ThreadingHTTPServer on 127.0.0.1:<random port> running in a daemon thread."""

    def __init__(self) -> None:
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._requests: list[RecordedRequest] = []
        self._req_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        if self._httpd is not None:
            return self
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.owner = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- request log -------------------------------------------------------------------------
    def _record(self, req: RecordedRequest) -> None:
        with self._req_lock:
            self._requests.append(req)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received so far (in arrival order)."""
        with self._req_lock:
            return list(self._requests)

    @property
    def calls(self) -> list[tuple[str, str]]:
        """``[(method, raw_path), ...]`` of every request received so far."""
        return [(r.method, r.path) for r in self.requests]

    def clear_requests(self) -> None:
        with self._req_lock:
            self._requests.clear()

    def _dispatch(self, req: RecordedRequest) -> tuple[int, dict[str, str], bytes]:  # pragma: no cover
        raise NotImplementedError


def _json_response(obj: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=a-b`` range. Returns inclusive (start, end) or None (serve everything)."""
    if not header or not header.startswith("bytes="):
        return None
    spec = header[len("bytes="):].split(",")[0].strip()
    start_s, _, end_s = spec.partition("-")
    if start_s == "":  # suffix range: last N bytes
        n = int(end_s)
        return (max(size - n, 0), size - 1) if size else None
    start = int(start_s)
    end = int(end_s) if end_s else size - 1
    if start >= size:
        raise _HTTPError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


def _file_response(method: str, data: bytes, headers: dict[str, str], range_header: str | None):
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **headers}
    rng = _parse_range(range_header, len(data)) if method == "GET" else None
    if rng is None:
        headers["Content-Length"] = str(len(data))
        return 200, headers, data
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    chunk = data[start:end + 1]
    headers["Content-Length"] = str(len(chunk))
    return 206, headers, chunk


# --------------------------------------------------------------------------------------------
# Hugging Face Hub stand-in
# --------------------------------------------------------------------------------------------


@dataclass
class _Commit:
    oid: str
    parent: str | None
    tree: dict[str, str]  # path in repo -> blob oid (git sha1)
    title: str
    description: str
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # branch / "refs/pr/N" -> commit oid
    commits: dict[str, _Commit] = field(default_factory=dict)
    n_prs: int = 0


class HubServer(_BackgroundHTTPServer):
    """Minimal Hugging Face Hub compatible server for tests.

    Repos live in memory, file contents in ``<root>/blobs/<git sha1>``. Every commit gets a fresh
    40-hex oid and moves its branch (``main`` by default) forward; older commits stay resolvable
    by oid (or by a >=7 char oid prefix).

    Auth: reads are anonymous for public repos; writes (create/delete repo, preupload, commit,
    branch) and ``whoami`` need ``Authorization: Bearer <token>``. A wrong token is answered
    ``401 Invalid credentials in Authorization header`` like the real Hub.

    Useful attributes: ``url``, ``token``, ``user``, ``requests`` / ``calls`` / ``clear_requests()``
    and the direct (non-HTTP) helpers ``create_repo``, ``commit_files``, ``read_file``,
    ``list_files``, ``head``, ``repo_exists`` to seed or inspect state.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, token: str = FAKE_TOKEN, user: str = DEFAULT_USER,
                 initial_gitattributes: bool = True) -> None:
        super().__init__()
        self._tmp: tempfile.TemporaryDirectory | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hubserver-")
            root = self._tmp.name
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self.initial_gitattributes = initial_gitattributes
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        # Set by the `hub_server` fixture (where the client-side cache lives).
        self.hf_home: Path | None = None
        self.cache_dir: Path | None = None

    def stop(self) -> None:
        super().stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---------------------------------------------------------------------------------------
    # Direct (in-process) API for tests
    # ---------------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False,
                    exist_ok: bool = True) -> str:
        """Create a repo (with an initial commit, like the Hub). Returns the commit oid of ``main``."""
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id} already exists")
                return self._repos[key].refs["main"]
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now_iso())
            self._repos[key] = repo
            files = {".gitattributes": _DEFAULT_GITATTRIBUTES} if self.initial_gitattributes else {}
            return self._commit(repo, "main", files, [], [], title="initial commit")

    def delete_repo(self, repo_id: str, *, repo_type: str = "model") -> None:
        with self._lock:
            self._repos.pop((repo_type, repo_id), None)

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self._repos

    def commit_files(self, repo_id: str, files: Mapping[str, bytes | str], *, repo_type: str = "model",
                     revision: str = "main", deletions: tuple[str, ...] = (), message: str = "commit from test",
                     create_repo: bool = True) -> str:
        """Commit ``files`` (path -> content) directly, creating the repo if needed. Returns the new commit oid."""
        with self._lock:
            if create_repo:
                self.create_repo(repo_id, repo_type=repo_type)
            repo = self._get_repo_or_raise(repo_type, repo_id)
            if revision not in repo.refs:
                repo.refs[revision] = repo.refs["main"]
            blobs = {p: (c.encode() if isinstance(c, str) else bytes(c)) for p, c in files.items()}
            return self._commit(repo, revision, blobs, list(deletions), [], title=message)

    def head(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Commit oid that ``revision`` (branch, oid or oid prefix) points to. KeyError if unknown."""
        return self._resolve_direct(repo_type, repo_id, revision)[1]

    def list_files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[str]:
        repo, oid = self._resolve_direct(repo_type, repo_id, revision)
        return sorted(repo.commits[oid].tree)

    def read_file(self, repo_id: str, filename: str, revision: str = "main", *, repo_type: str = "model") -> bytes:
        repo, oid = self._resolve_direct(repo_type, repo_id, revision)
        tree = repo.commits[oid].tree
        if filename not in tree:
            raise KeyError(filename)
        return self._read_blob(tree[filename])

    def commit_log(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[dict[str, Any]]:
        """Commits reachable from ``revision``, newest first: ``[{"oid", "title", "files"}, ...]``."""
        repo, oid = self._resolve_direct(repo_type, repo_id, revision)
        out = []
        while oid is not None:
            c = repo.commits[oid]
            out.append({"oid": c.oid, "title": c.title, "files": sorted(c.tree)})
            oid = c.parent
        return out

    # ---------------------------------------------------------------------------------------
    # Storage internals
    # ---------------------------------------------------------------------------------------
    def _write_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            tmp = path.with_name(f"{oid}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return oid

    def _read_blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def _get_repo_or_raise(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"{repo_type} repo {repo_id} does not exist")
        return repo

    def _resolve_direct(self, repo_type: str, repo_id: str, revision: str) -> tuple[_Repo, str]:
        repo = self._get_repo_or_raise(repo_type, repo_id)
        try:
            return repo, self._resolve_revision(repo, revision)
        except _HTTPError as e:
            raise KeyError(e.message) from None

    def _resolve_revision(self, repo: _Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if _HEX40.fullmatch(revision) and revision in repo.commits:
            return revision
        if _HEX_PREFIX.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise _HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def _commit(self, repo: _Repo, branch: str, additions: Mapping[str, bytes], deleted_files: list[str],
                deleted_folders: list[str], *, title: str, description: str = "") -> str:
        with self._lock:
            parent = repo.refs.get(branch)
            tree = dict(repo.commits[parent].tree) if parent else {}
            for path in deleted_files:
                if path not in tree:
                    raise _HTTPError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del tree[path]
            for folder in deleted_folders:
                prefix = folder.rstrip("/") + "/"
                for path in [p for p in tree if p.startswith(prefix)]:
                    del tree[path]
            for path, data in additions.items():
                tree[path] = self._write_blob(data)
            self._counter += 1
            seed = json.dumps([repo.repo_type, repo.repo_id, parent, sorted(tree.items()), title, self._counter,
                               time.time_ns()])
            oid = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[oid] = _Commit(oid=oid, parent=parent, tree=tree, title=title, description=description,
                                        date=_now_iso())
            repo.refs[branch] = oid
            return oid

    # ---------------------------------------------------------------------------------------
    # HTTP layer
    # ---------------------------------------------------------------------------------------
    def _auth(self, req: RecordedRequest, *, required: bool) -> bool:
        """Return whether the request carries the server token. Raise 401 on a wrong/missing required token."""
        header = req.headers.get("authorization")
        if header is None:
            if required:
                raise _HTTPError(401, "Unauthorized: a write token is required")
            return False
        token = header[len("Bearer "):] if header.startswith("Bearer ") else header
        if token != self.token:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        return True

    def _repo_for_request(self, req: RecordedRequest, repo_type: str, repo_id: str, *, write: bool) -> _Repo:
        authed = self._auth(req, required=write)
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise _HTTPError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.url}/{prefix}{repo_id}"

    def _dispatch(self, req: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        segs = req.path.split("/")[1:]
        with self._lock:
            if segs and segs[0] == "api":
                return self._dispatch_api(req, [unquote(s) for s in segs[1:]])
            if "resolve" in segs:
                return self._handle_resolve(req, segs)
        raise _HTTPError(404, f"Route not implemented by test HubServer: {req.method} {req.path}")

    # -- /{repo_id}/resolve/{revision}/{filename} -------------------------------------------
    def _handle_resolve(self, req: RecordedRequest, segs: list[str]):
        if req.method not in ("GET", "HEAD"):
            raise _HTTPError(405, "Method not allowed")
        i = segs.index("resolve")
        repo_segs = [unquote(s) for s in segs[:i]]
        repo_type = "model"
        if repo_segs and repo_segs[0] in _REPO_TYPE_PREFIXES:
            repo_type = _REPO_TYPE_PREFIXES[repo_segs.pop(0)]
        if len(segs) < i + 3 or not repo_segs:
            raise _HTTPError(404, "Invalid resolve url")
        repo_id = "/".join(repo_segs)
        revision = unquote(segs[i + 1])
        filename = "/".join(unquote(s) for s in segs[i + 2:])
        repo = self._repo_for_request(req, repo_type, repo_id, write=False)
        commit_oid = self._resolve_revision(repo, revision)
        tree = repo.commits[commit_oid].tree
        if filename not in tree:
            raise _HTTPError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit_oid})
        oid = tree[filename]
        headers = {"X-Repo-Commit": commit_oid, "ETag": f'"{oid}"'}
        return _file_response(req.method, self._read_blob(oid), headers, req.headers.get("range"))

    # -- /api/... ------------------------------------------------------------------------------
    def _dispatch_api(self, req: RecordedRequest, segs: list[str]):
        m = req.method
        if segs == ["whoami-v2"] and m == "GET":
            self._auth(req, required=True)
            return _json_response({
                "type": "user", "id": "0" * 24, "name": self.user, "fullname": "Test User",
                "email": f"{self.user}@example.invalid", "emailVerified": True, "isPro": False, "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "hubserver", "role": "write"}},
            })
        if segs == ["agent-harnesses"] and m == "GET":
            return _json_response({"standardEnvVars": [], "harnesses": {}})
        if segs == ["validate-yaml"] and m == "POST":
            return _json_response({"errors": [], "warnings": []})
        if segs == ["repos", "create"] and m == "POST":
            return self._api_create_repo(req)
        if segs == ["repos", "delete"] and m == "DELETE":
            return self._api_delete_repo(req)
        if len(segs) >= 2 and segs[0] in ("models", "datasets", "spaces", "kernels"):
            repo_type = segs[0][:-1]
            rest = segs[1:]
            if len(rest) >= 3 and rest[2] in _REPO_API_ACTIONS:
                repo_id, action, args = "/".join(rest[:2]), rest[2], rest[3:]
            elif len(rest) >= 2 and rest[1] in _REPO_API_ACTIONS:
                repo_id, action, args = rest[0], rest[1], rest[2:]
            elif len(rest) <= 2:
                repo_id, action, args = "/".join(rest), None, []
            else:
                raise _HTTPError(404, f"Route not implemented by test HubServer: {m} {req.path}")
            return self._dispatch_repo_api(req, repo_type, repo_id, action, args)
        raise _HTTPError(404, f"Route not implemented by test HubServer: {m} {req.path}")

    def _dispatch_repo_api(self, req, repo_type, repo_id, action, args):
        m = req.method
        if action is None and m == "GET":
            repo = self._repo_for_request(req, repo_type, repo_id, write=False)
            return self._api_info(req, repo, "main")
        if action == "revision" and m == "GET" and args:
            repo = self._repo_for_request(req, repo_type, repo_id, write=False)
            return self._api_info(req, repo, "/".join(args))
        if action == "tree" and m == "GET" and args:
            repo = self._repo_for_request(req, repo_type, repo_id, write=False)
            return self._api_tree(req, repo, args[0], "/".join(args[1:]))
        if action == "paths-info" and m == "POST" and args:
            repo = self._repo_for_request(req, repo_type, repo_id, write=False)
            return self._api_paths_info(req, repo, args[0])
        if action == "refs" and m == "GET":
            repo = self._repo_for_request(req, repo_type, repo_id, write=False)
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                        for n, o in repo.refs.items() if not n.startswith("refs/")]
            prs = [{"name": n, "ref": n, "targetCommit": o} for n, o in repo.refs.items() if n.startswith("refs/pr/")]
            return _json_response({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})
        if action == "preupload" and m == "POST" and args:
            repo = self._repo_for_request(req, repo_type, repo_id, write=True)
            return self._api_preupload(req, repo, args[0])
        if action == "commit" and m == "POST" and args:
            repo = self._repo_for_request(req, repo_type, repo_id, write=True)
            return self._api_commit(req, repo, args[0])
        if action == "branch" and m == "POST" and args:
            repo = self._repo_for_request(req, repo_type, repo_id, write=True)
            branch = "/".join(args)
            payload = json.loads(req.body or b"{}")
            if branch in repo.refs:
                raise _HTTPError(409, f"Reference already exists: {branch}")
            repo.refs[branch] = self._resolve_revision(repo, payload.get("startingPoint") or "main")
            return _json_response({})
        raise _HTTPError(404, f"Route not implemented by test HubServer: {m} {req.path}")

    def _api_create_repo(self, req):
        self._auth(req, required=True)
        payload = json.loads(req.body or b"{}")
        name = payload.get("name")
        if not name:
            raise _HTTPError(400, "Missing repo name")
        namespace = payload.get("organization") or self.user
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self._repos:
            raise _HTTPError(409, f"You already created this {repo_type} repo", body={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=False)
        return _json_response({"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24]})

    def _api_delete_repo(self, req):
        self._auth(req, required=True)
        payload = json.loads(req.body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload.get('name')}"
        if (repo_type, repo_id) not in self._repos:
            raise _HTTPError(404, "Repository not found", code="RepoNotFound")
        self.delete_repo(repo_id, repo_type=repo_type)
        return _json_response({})

    def _api_info(self, req, repo: _Repo, revision: str):
        oid = self._resolve_revision(repo, revision)
        commit = repo.commits[oid]
        with_blobs = req.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, blob in sorted(commit.tree.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sib.update(size=(self.root / "blobs" / blob).stat().st_size, blobId=blob)
            siblings.append(sib)
        namespace = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return _json_response({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": namespace,
            "sha": oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "spaces": [],
        })

    def _tree_entries(self, commit: _Commit, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        files: list[dict[str, Any]] = []
        folders: dict[str, dict[str, Any]] = {}
        for path, blob in sorted(commit.tree.items()):
            if not path.startswith(base):
                continue
            rel = path[len(base):]
            parts = rel.split("/")
            # folders between `prefix` and the file
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                folder = base + "/".join(parts[:depth])
                folders.setdefault(folder, {
                    "type": "directory", "path": folder,
                    "oid": hashlib.sha1(f"tree {commit.oid} {folder}".encode()).hexdigest(),
                })
            if len(parts) == 1 or recursive:
                files.append({"type": "file", "path": path, "oid": blob,
                              "size": (self.root / "blobs" / blob).stat().st_size})
        return list(folders.values()) + files

    def _api_tree(self, req, repo: _Repo, revision: str, path: str):
        commit = repo.commits[self._resolve_revision(repo, revision)]
        recursive = req.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        if path and path in commit.tree:
            raise _HTTPError(400, f"{path} is a file, not a folder")
        entries = self._tree_entries(commit, path, recursive)
        if path and not entries:
            raise _HTTPError(404, f"Entry not found: {path}", code="EntryNotFound")
        return _json_response(entries)

    def _api_paths_info(self, req, repo: _Repo, revision: str):
        commit = repo.commits[self._resolve_revision(repo, revision)]
        ctype = req.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            paths = json.loads(req.body or b"{}").get("paths", [])
        else:
            paths = parse_qs(req.body.decode(), keep_blank_values=True).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.tree:
                blob = commit.tree[p]
                out.append({"type": "file", "path": p, "oid": blob,
                            "size": (self.root / "blobs" / blob).stat().st_size})
            elif any(f.startswith(p + "/") for f in commit.tree):
                out.append({"type": "directory", "path": p,
                            "oid": hashlib.sha1(f"tree {commit.oid} {p}".encode()).hexdigest()})
        return _json_response(out)

    def _api_preupload(self, req, repo: _Repo, revision: str):
        commit_oid = self._resolve_revision(repo, revision)
        tree = repo.commits[commit_oid].tree
        payload = json.loads(req.body or b"{}")
        files = []
        for f in payload.get("files", []):
            path = f["path"]
            # Always "regular": the content travels base64-encoded inside the commit payload.
            files.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": tree.get(path)})
        return _json_response({"files": files, "commitOid": commit_oid})

    def _api_commit(self, req, repo: _Repo, revision: str):
        create_pr = req.query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        header: dict[str, Any] = {}
        additions: dict[str, bytes] = {}
        deleted_files: list[str] = []
        deleted_folders: list[str] = []
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                content = value.get("content", "")
                if value.get("encoding", "base64") == "base64":
                    additions[value["path"]] = base64.b64decode(content)
                else:
                    additions[value["path"]] = content.encode()
            elif key == "deletedFile":
                deleted_files.append(value["path"])
            elif key == "deletedFolder":
                deleted_folders.append(value["path"])
            elif key == "lfsFile":
                raise _HTTPError(422, "test HubServer only accepts regular (inline) uploads, got an LFS file: "
                                      f"{value.get('path')}")
            else:
                raise _HTTPError(400, f"Unknown commit operation key: {key!r}")
        base_oid = self._resolve_revision(repo, revision)
        parent_commit = header.get("parentCommit")
        if parent_commit and not base_oid.startswith(parent_commit):
            raise _HTTPError(412, "A commit has happened since. Please refresh and try again.")
        pr_url = None
        if create_pr:
            repo.n_prs += 1
            branch = f"refs/pr/{repo.n_prs}"
            repo.refs[branch] = base_oid
            pr_url = f"{self._repo_url(repo.repo_type, repo.repo_id)}/discussions/{repo.n_prs}"
        elif revision in repo.refs:
            branch = revision
        else:
            raise _HTTPError(400, f"Cannot commit to {revision!r}: not a branch")
        oid = self._commit(repo, branch, additions, deleted_files, deleted_folders,
                           title=header.get("summary", ""), description=header.get("description", ""))
        return _json_response({
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self._repo_url(repo.repo_type, repo.repo_id)}/commit/{oid}",
            "pullRequestUrl": pr_url,
            "hookOutput": "",
        })


# --------------------------------------------------------------------------------------------
# Static file server (torch.hub)
# --------------------------------------------------------------------------------------------


class StaticFileServer(_BackgroundHTTPServer):
    """Serve the files under ``root`` at ``{url}/<relative path>`` (GET/HEAD, Range, 404)."""

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def url_for(self, relpath: str) -> str:
        return f"{self.url}/{quote(relpath)}"

    def add_file(self, relpath: str, data: bytes | str) -> str:
        """Write ``data`` at ``root/relpath`` and return its URL."""
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return self.url_for(relpath)

    def _dispatch(self, req: RecordedRequest):
        if req.method not in ("GET", "HEAD"):
            raise _HTTPError(405, "Method not allowed")
        target = (self.root / unquote(req.path).lstrip("/")).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            raise _HTTPError(404, f"Not found: {req.path}")
        return _file_response(req.method, target.read_bytes(), {}, req.headers.get("range"))


# --------------------------------------------------------------------------------------------
# Patching huggingface_hub (endpoint, cache, token, offline)
# --------------------------------------------------------------------------------------------


def _add_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(var, "")
        entries = [e for e in current.split(",") if e]
        for host in ("127.0.0.1", "localhost"):
            if host not in entries:
                entries.append(host)
        monkeypatch.setenv(var, ",".join(entries))


def set_hf_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Switch ``huggingface_hub`` offline mode on/off for the current test.

    ``HF_HUB_OFFLINE`` is read once at import into ``huggingface_hub.constants.HF_HUB_OFFLINE``;
    ``constants.is_offline_mode()`` (checked by the httpx2 request hook of ``get_session()``)
    reads that constant, so the env var alone has no effect after import.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def patch_hf_environment(monkeypatch: pytest.MonkeyPatch, *, endpoint: str, hf_home: str | os.PathLike,
                         token: str | None = FAKE_TOKEN, offline: bool = False) -> Path:
    """Point ``huggingface_hub`` (already imported) at ``endpoint`` with its caches under ``hf_home``.

    Returns the hub cache directory (``<hf_home>/hub``). Everything is undone by monkeypatch.

    Why so much: ``huggingface_hub.constants`` evaluates ``HF_ENDPOINT``, ``HF_HOME``,
    ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ... once at import time, a few modules copy constants
    by name, and ``huggingface_hub.hf_api`` builds a module-level ``api = HfApi()`` whose bound
    methods are exported as ``huggingface_hub.create_repo`` / ``upload_file`` / ``model_info`` /
    ``whoami`` ... with ``endpoint`` frozen at import. Env vars are set too (for subprocesses
    and for values read lazily, e.g. ``HF_TOKEN``).
    """
    import huggingface_hub.hf_api as hf_api
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_assets, _cache_manager, _http

    endpoint = endpoint.rstrip("/")
    hf_home = Path(hf_home)
    hub_cache = hf_home / "hub"
    assets_cache = hf_home / "assets"
    xet_cache = hf_home / "xet"
    token_path = hf_home / "token"
    hub_cache.mkdir(parents=True, exist_ok=True)

    # --- environment (read lazily by some code paths, and inherited by subprocesses) -------
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets_cache),
        "HF_XET_CACHE": str(xet_cache),
        "HF_TOKEN_PATH": str(token_path),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE",
              "HUGGINGFACE_CO_STAGING", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)  # get_token() reads os.environ at call time
    _add_no_proxy(monkeypatch)

    # --- constants frozen at import time ---------------------------------------------------
    host = urlsplit(endpoint).hostname or "127.0.0.1"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {host.lower()}))
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(assets_cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_ASSETS_CACHE", str(assets_cache))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(xet_cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_path))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    for name, value in (("CHECK_FOR_UPDATE_DONE_PATH", hf_home / ".check_for_update_done"),
                        ("CHECK_FOR_SKILL_UPDATE_DONE_PATH", hf_home / ".check_for_skill_update_done"),
                        ("AGENT_HARNESSES_PATH", hf_home / ".agent_harnesses.json")):
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, str(value))
    # Telemetry on => build_hf_headers() calls detect_agent(), which fetches
    # {ENDPOINT}/api/agent-harnesses once per process (3 s timeout). Keep it off.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    set_hf_offline(monkeypatch, offline)

    # --- copies made with `from ..constants import X` --------------------------------------
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", str(assets_cache))
    try:
        from huggingface_hub.utils import _git_credential

        monkeypatch.setattr(_git_credential, "ENDPOINT", endpoint)
    except ImportError:  # pragma: no cover
        pass

    # --- objects built at import time ------------------------------------------------------
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # huggingface_hub.create_repo & co.
    monkeypatch.setattr(_http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(endpoint)}))

    # The shared httpx2 client is created lazily and reads proxy env vars at creation:
    # drop it so the next call builds a fresh one (and nothing pools connections to old ports).
    _http.close_session()
    return hub_cache


# --------------------------------------------------------------------------------------------
# Cache prefill helpers
# --------------------------------------------------------------------------------------------


def hf_cache_repo_dir(cache_dir: str | os.PathLike, repo_id: str, repo_type: str = "model") -> Path:
    """``<cache_dir>/models--org--name`` (same naming as ``huggingface_hub.file_download.repo_folder_name``)."""
    return Path(cache_dir) / "--".join([f"{repo_type}s", *repo_id.split("/")])


def prefill_hf_cache(cache_dir: str | os.PathLike, repo_id: str, files: Mapping[str, bytes | str],
                     revision_sha: str | None = None, *, repo_type: str = "model", ref: str | None = "main",
                     symlinks: bool = True) -> Path:
    """Write ``files`` into a ``huggingface_hub`` cache as if they had been downloaded.

    Layout (identical to what ``hf_hub_download`` produces for regular files)::

        <cache_dir>/models--org--name/
            blobs/<git-sha1 of content>              # the bytes (etag = git blob sha1, like the Hub)
            snapshots/<revision_sha>/<filename>      # relative symlink -> ../../blobs/<etag> (or a copy)
            refs/<ref>                               # "<revision_sha>" (no trailing newline)

    ``revision_sha`` defaults to a deterministic 40-hex digest of the file set. Returns the
    snapshot directory (its name is the revision sha). With ``HF_HUB_OFFLINE`` (see
    ``set_hf_offline``) ``hf_hub_download(repo_id, filename, cache_dir=cache_dir)`` then returns
    ``snapshots/<sha>/<filename>`` without any network; so does ``revision=<sha>`` even online.
    """
    blobs_by_name = {name: (data.encode() if isinstance(data, str) else bytes(data)) for name, data in files.items()}
    if revision_sha is None:
        digest = hashlib.sha1()
        for name in sorted(blobs_by_name):
            digest.update(f"{name}\0{git_blob_sha1(blobs_by_name[name])}\0".encode())
        revision_sha = digest.hexdigest()
    if not _HEX40.fullmatch(revision_sha):
        raise ValueError(f"revision_sha must be 40 lowercase hex characters, got {revision_sha!r}")

    storage = hf_cache_repo_dir(cache_dir, repo_id, repo_type)
    snapshot = storage / "snapshots" / revision_sha
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in blobs_by_name.items():
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid filename in repo: {name!r}")
        blob = storage / "blobs" / git_blob_sha1(data)
        if not blob.exists():
            blob.write_bytes(data)
        pointer = snapshot.joinpath(*parts)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        if symlinks:
            try:
                os.symlink(os.path.relpath(blob, pointer.parent), pointer)
                continue
            except OSError:
                pass
        shutil.copyfile(blob, pointer)
    if ref is not None:
        ref_path = storage / "refs" / ref
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(revision_sha)
    return snapshot


def prefill_torch_hub_cache(torch_home: str | os.PathLike, filename: str, obj: Any) -> Path:
    """Write ``obj`` to ``$TORCH_HOME/hub/checkpoints/<filename>`` (where ``load_state_dict_from_url`` looks).

    ``obj`` may be raw ``bytes`` (written as is) or anything ``torch.save`` accepts (e.g. a state dict).
    ``torch.hub.load_state_dict_from_url(<any url whose basename is filename>)`` then loads it with no
    network access, provided ``TORCH_HOME`` points to ``torch_home`` (see the ``torch_home`` fixture)
    or ``model_dir=<torch_home>/hub/checkpoints`` is passed.
    """
    path = Path(torch_home) / "hub" / "checkpoints" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        path.write_bytes(bytes(obj))
    else:
        import torch

        torch.save(obj, path)
    return path


# --------------------------------------------------------------------------------------------
# Pytest fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running ``HubServer`` with ``huggingface_hub`` pointed at it.

    Active for the test: ``constants.ENDPOINT`` & URL template = server url, ``HfApi()`` and the
    module-level ``huggingface_hub.create_repo``/``upload_file``/... default to it, ``HF_HOME`` =
    ``tmp_path/"hf_home"`` (cache at ``server.cache_dir``), ``HF_TOKEN`` = ``server.token``,
    offline mode off, telemetry off.
    """
    from huggingface_hub.utils import close_session

    server = HubServer(tmp_path / "hubserver_storage")
    server.start()
    try:
        server.hf_home = tmp_path / "hf_home"
        server.cache_dir = patch_hf_environment(monkeypatch, endpoint=server.url, hf_home=server.hf_home,
                                                token=server.token)
        yield server
    finally:
        close_session()  # drop keep-alive connections to the server before stopping it
        server.stop()


@pytest.fixture
def hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline ``huggingface_hub`` with an empty cache at the returned path (``tmp_path/"hf_home"/"hub"``).

    ``HF_HUB_OFFLINE`` is on (constant + env) and, as a second safety net, the endpoint points to a
    closed 127.0.0.1 port; no token is configured. Fill the cache with ``prefill_hf_cache(path, ...)``.
    """
    return patch_hf_environment(monkeypatch, endpoint=unused_local_url(), hf_home=tmp_path / "hf_home",
                                token=None, offline=True)


@pytest.fixture
def file_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StaticFileServer]:
    """A running ``StaticFileServer`` serving ``tmp_path/"static"`` (add files with ``add_file``)."""
    _add_no_proxy(monkeypatch)  # urllib (torch.hub) honours *_proxy env vars
    with StaticFileServer(tmp_path / "static") as server:
        yield server


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``TORCH_HOME`` = ``tmp_path/"torch_home"`` (and any ``torch.hub.set_dir`` override cleared)."""
    import torch.hub

    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home
