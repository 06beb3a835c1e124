"""A small Hugging Face Hub on 127.0.0.1, for tests: the part of the API ``huggingface_hub`` calls.

Repos live in memory as commits (``{path: bytes}`` snapshots) with branches and PR refs.
Served routes:

- ``GET /api/models/{repo}[/revision/{rev}]``: repo info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a file, with ``ETag``, ``X-Repo-Commit`` and
  ``Content-Length`` headers, and ``Range`` requests (used to resume a dropped download);
- ``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}``,
  ``POST /{repo}.git/info/lfs/objects/batch``, ``PUT /lfs-upload/{oid}``,
  ``POST /api/models/{repo}/commit/{rev}``: creating repos and committing (regular and LFS files).

Faults for tests: ``drop_after`` (close the connection part-way through a file), ``fail_status``
(answer a path with an HTTP error). Every request is logged in ``requests``. The server also
answers proxy-style requests (absolute URLs), counted in ``proxied``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".msgpack", ".pt")


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str


@dataclasses.dataclass
class Repo:
    repo_id: str
    private: bool = False
    refs: dict[str, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    prs: int = 0

    def resolve(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)


class LocalHub:
    """The server and its state. ``with LocalHub() as hub: ...`` or ``start()`` / ``stop()``."""

    def __init__(self, token: str = "hf_test_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.proxied = 0
        #: ``{repo path: (bytes to send before closing, how many times)}``
        self.drop_after: dict[str, list[int]] = {}
        #: ``{repo path or URL prefix: HTTP status}``
        self.fail_status: dict[str, int] = {}
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- repo helpers --------------------------------------------------------------------------

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id, private))
            return repo

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes] | None = None,
        *,
        delete: tuple[str, ...] = (),
        message: str = "commit",
        branch: str = "main",
        new_branch: str | None = None,
    ) -> str:
        """Commit on top of ``branch`` (or start ``new_branch`` from it); returns the commit oid."""
        with self.lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            parent = repo.resolve(branch)
            tree = dict(parent.files) if parent else {}
            for path in delete:
                tree = {p: v for p, v in tree.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
            tree.update(files or {})
            self._counter += 1
            oid = hashlib.sha1(f"{repo_id}:{self._counter}:{message}".encode()).hexdigest()
            repo.commits[oid] = Commit(oid, tree, message)
            repo.refs[new_branch or branch] = oid
            return oid

    def upload_folder(self, repo_id: str, folder: str | Path, **kwargs: Any) -> str:
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.commit(repo_id, files, **kwargs)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(revision)
        assert commit is not None
        return commit.files

    def downloads(self) -> list[str]:
        """Paths fetched with ``GET .../resolve/...`` so far."""
        return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]


class _Handler(BaseHTTPRequestHandler):
    state: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def _route(self) -> tuple[str, dict[str, list[str]]]:
        raw = self.path
        if raw.startswith(("http://", "https://")):
            self.state.proxied += 1
            parts = urlsplit(raw)
            raw = parts.path + (f"?{parts.query}" if parts.query else "")
        path, _, query = raw.partition("?")
        with self.state.lock:
            self.state.requests.append((self.command, path))
        return path, parse_qs(query)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status, headers)

    def _authorized(self) -> bool | None:
        """``True``: valid token; ``None``: no token; ``False``: a wrong token."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        return auth == f"Bearer {self.state.token}"

    def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        auth = self._authorized()
        if auth is False:
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        if repo is None or (repo.private and auth is None):
            self._error(401 if auth is None else 404, "RepoNotFound", "Repository not found")
            return None
        if write and not auth:
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        return repo

    def _fault(self, path: str) -> bool:
        for prefix, status in self.state.fail_status.items():
            if path.startswith(prefix) or path.endswith(prefix):
                self._error(status, None, f"injected HTTP {status}")
                return True
        return False

    # -- verbs -------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path, query = self._route()
        if self._fault(path):
            return
        m = re.match(r"^/api/models/([^/]+/[^/]+|[^/]+)(?:/revision/([^/]+))?$", path)
        if m:
            return self._info(unquote(m[1]), unquote(m[2] or "main"))
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
        if m:
            return self._tree(unquote(m[1]), unquote(m[2]), unquote(m[3] or ""), query)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._resolve(unquote(m[1]), unquote(m[2]), unquote(m[3]))
        self._error(404, None, f"no route for GET {path}")

    def do_POST(self) -> None:
        path, query = self._route()
        body = self._body()
        if self._fault(path):
            return
        if path == "/api/repos/create":
            return self._create(json.loads(body or b"{}"))
        m = re.match(r"^/api/models/([^/]+/[^/]+)/preupload/([^/]+)$", path)
        if m:
            return self._preupload(unquote(m[1]), json.loads(body))
        m = re.match(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
        if m:
            return self._lfs_batch(unquote(m[1]), json.loads(body))
        m = re.match(r"^/api/models/([^/]+/[^/]+)/commit/([^/]+)$", path)
        if m:
            return self._commit(unquote(m[1]), unquote(m[2]), body, "create_pr" in query)
        self._error(404, None, f"no route for POST {path}")

    def do_PUT(self) -> None:
        path, _ = self._route()
        body = self._body()
        m = re.match(r"^/lfs-upload/([0-9a-f]{64})$", path)
        if not m:
            return self._error(404, None, f"no route for PUT {path}")
        if hashlib.sha256(body).hexdigest() != m[1]:
            return self._error(400, None, "sha256 mismatch")
        with self.state.lock:
            self.state.lfs[m[1]] = body
        self._send(200)

    # -- download routes -----------------------------------------------------------------------

    def _commit_or_error(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = self._commit_or_error(repo, revision)
        if commit is None:
            return
        siblings = [{"rfilename": p} for p in sorted(commit.files)]
        self._json(
            {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private, "siblings": siblings}
        )

    def _tree(self, repo_id: str, revision: str, under: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = self._commit_or_error(repo, revision)
        if commit is None:
            return
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{under.rstrip('/')}/" if under else ""
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, data in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries.extend({"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders))
        self._json(entries)

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = self._commit_or_error(repo, revision)
        if commit is None:
            return
        data = commit.files.get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start = 0
        ranged = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
        if ranged and self.command == "GET":
            start = int(ranged[1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        with self.state.lock:
            plan = self.state.drop_after.get(path)
            drop = self.command == "GET" and plan is not None and plan[1] > 0
            if drop and plan is not None:
                plan[1] -= 1
        if not drop:
            return self._send(206 if start else 200, body, headers)
        # Announce the whole body, send part of it, then cut the connection.
        assert plan is not None
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: plan[0]])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- upload routes -------------------------------------------------------------------------

    def _create(self, payload: dict[str, Any]) -> None:
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        name = payload.get("name", "")
        org = payload.get("organization")
        repo_id = f"{org}/{name}" if org else name
        with self.state.lock:
            if repo_id in self.state.repos:
                message = "You already created this model repo"
                return self._json(
                    {"error": message, "url": f"{self.state.url}/{repo_id}"}, 409, {"X-Error-Message": message}
                )
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = self.state.create_repo(repo_id, private=private)
            self.state.commit(repo.repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"}, message="initial")
        self._json({"url": f"{self.state.url}/{repo_id}", "name": repo_id})

    def _preupload(self, repo_id: str, payload: dict[str, Any]) -> None:
        if self._repo(repo_id, write=True) is None:
            return
        files = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) and f["size"] > 0 else "regular",
                "shouldIgnore": False,
            }
            for f in payload["files"]
        ]
        self._json({"files": files})

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
        if self._repo(repo_id, write=True) is None:
            return
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"{self.state.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        if repo.resolve(revision) is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        message = ""
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value["summary"]
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                data = self.state.lfs.get(value["oid"])
                if data is None:
                    return self._error(400, None, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = data
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        pr_url = None
        with self.state.lock:
            if create_pr:
                repo.prs += 1
                branch = f"refs/pr/{repo.prs}"
                oid = self.state.commit(
                    repo_id, files, delete=tuple(deleted), message=message, branch=revision, new_branch=branch
                )
                pr_url = f"{self.state.url}/{repo_id}/discussions/{repo.prs}"
            else:
                oid = self.state.commit(repo_id, files, delete=tuple(deleted), message=message, branch=revision)
        self._json(
            {"commitUrl": f"{self.state.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}
        )
