"""A stand-in Hugging Face Hub on 127.0.0.1 for tests (a thread in the test process).

It speaks what ``huggingface_hub`` (``hf_hub_download``, ``snapshot_download``, ``HfApi``) uses:

- ``HEAD|GET /{repo}/resolve/{revision}/{path}`` (``/datasets/{repo}/...`` for datasets):
  ``X-Repo-Commit``, ``ETag`` (the git blob sha1 of a small file; for an LFS file its sha256,
  also in ``X-Linked-Etag``, with ``X-Linked-Size``), ``Content-Length``; GET honours ``Range``
  (206 + ``Content-Range``);
- ``GET /api/{models|datasets}/{repo}/revision/{revision}``: ``{id, sha, siblings}``;
- ``GET /api/{models|datasets}/{repo}/tree/{revision}[?recursive=...]``: the file list with
  ``oid`` (git blob sha1), ``size`` and ``lfs: {oid: sha256, size, pointerSize}``;
- plain files by URL (``add_url``): ``GET /files/<name>``, Range honoured.

Faults for tests: ``corrupt`` (serve other bytes than the metadata says, same length),
``drop_once`` (close the connection half-way through the first GET of a file, after sending a
full Content-Length), and ``requests`` records (method, path, Range header) of every request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_MIN = 1024  # files this size or bigger (and every *.safetensors) are LFS files


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class StandInHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}  # (repo_type, repo) -> {"refs": {name: commit}, "commits": {commit: {path: bytes}}}
        self.urls: dict[str, bytes] = {}
        self.corrupt: set[str] = set()  # file paths (in any repo) or url names served damaged
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ content
    def add_repo(self, repo: str, files: dict[str, bytes], repo_type: str = "model", branch: str = "main") -> str:
        """A new commit of ``repo`` holding exactly ``files``; ``branch`` points to it. Returns
        the commit sha (40 hex, from the content and the history)."""
        r = self.repos.setdefault((repo_type, repo), {"refs": {}, "commits": {}})
        h = hashlib.sha1(repr((repo, len(r["commits"]), sorted((k, git_blob_sha1(v)) for k, v in files.items()))).encode()).hexdigest()
        r["commits"][h] = dict(files)
        r["refs"][branch] = h
        return h

    def add_folder(self, repo: str, folder: Path, repo_type: str = "model", prefix: str = "") -> str:
        folder = Path(folder)
        files = {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add_repo(repo, files, repo_type)

    def add_url(self, name: str, data: bytes) -> str:
        self.urls[name] = data
        return f"{self.endpoint}/files/{name}"

    @staticmethod
    def is_lfs(path: str, data: bytes) -> bool:
        return len(data) >= LFS_MIN or path.endswith(".safetensors")

    def _resolve(self, repo_type: str, repo: str, revision: str):
        r = self.repos.get((repo_type, repo))
        if r is None:
            return None, None
        commit = r["refs"].get(revision, revision if revision in r["commits"] else None)
        return commit, (r["commits"].get(commit) if commit else None)

    # ------------------------------------------------------------------ HTTP
    def _handler(self):
        hub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=None, head=False, cut=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if head:
                    return
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        import socket

                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(body)

            def _json(self, obj, code=200, headers=None):
                self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _not_found(self, code="EntryNotFound", head=False):
                self._send(404, b"" if head else json.dumps({"error": code}).encode(), {"X-Error-Code": code, "Content-Type": "application/json"}, head=head)

            def _file(self, data: bytes, key: str, extra: dict, head: bool):
                rng = self.headers.get("Range")
                with hub._lock:
                    hub.requests.append((self.command, self.path, rng))
                    cut = not head and key in hub.drop_once
                    if cut:
                        hub.drop_once.discard(key)
                body = data
                if key in hub.corrupt:
                    body = bytes((b + 1) % 256 for b in data[:1]) + data[1:] if data else b"x"
                headers = dict(extra)
                headers["Accept-Ranges"] = "bytes"
                if rng and rng.startswith("bytes=") and not head:
                    start = int(rng[6:].split("-")[0] or 0)
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                    self._send(206, body[start:], headers)
                    return
                self._send(200, body, headers, head=head, cut=cut)

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            def _route(self, head: bool):
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if parts[:1] == ["files"] and len(parts) == 2:
                    name = parts[1]
                    if name not in hub.urls:
                        return self._not_found(head=head)
                    return self._file(hub.urls[name], name, {}, head)
                if parts[:1] == ["api"] and len(parts) >= 6 and parts[1] in ("models", "datasets"):
                    with hub._lock:
                        hub.requests.append((self.command, self.path, None))
                    rtype = parts[1][:-1]
                    repo = f"{parts[2]}/{parts[3]}"
                    commit, files = hub._resolve(rtype, repo, parts[5])
                    if (rtype, repo) not in hub.repos:
                        return self._not_found("RepoNotFound", head)
                    if files is None:
                        return self._not_found("RevisionNotFound", head)
                    if parts[4] == "revision":
                        return self._json({"id": repo, "sha": commit, "siblings": [{"rfilename": k} for k in sorted(files)]})
                    if parts[4] == "tree":
                        entries = []
                        for k, v in sorted(files.items()):
                            e = {"type": "file", "path": k, "size": len(v), "oid": git_blob_sha1(v)}
                            if hub.is_lfs(k, v):
                                e["lfs"] = {"oid": hashlib.sha256(v).hexdigest(), "size": len(v), "pointerSize": 134}
                            entries.append(e)
                        return self._json(entries)
                    return self._not_found(head=head)
                rtype = "model"
                if parts[:1] == ["datasets"]:
                    rtype, parts = "dataset", parts[1:]
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = f"{parts[0]}/{parts[1]}"
                    path = "/".join(parts[4:])
                    if (rtype, repo) not in hub.repos:
                        return self._not_found("RepoNotFound", head)
                    commit, files = hub._resolve(rtype, repo, parts[3])
                    if files is None:
                        return self._not_found("RevisionNotFound", head)
                    if path not in files:
                        return self._not_found("EntryNotFound", head)
                    data = files[path]
                    headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
                    if hub.is_lfs(path, data):
                        sha = hashlib.sha256(data).hexdigest()
                        headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
                    else:
                        headers["ETag"] = f'"{git_blob_sha1(data)}"'
                    return self._file(data, path, headers, head)
                return self._not_found(head=head)

        return H
