"""The one downloader (harness/store/fetch.py) against a plain HTTP server on 127.0.0.1: placement
in the content-addressed cache, the sha256 check, the size cap (announced and while reading),
the timeout, resumption, offline runs; every failure one line, nothing half-written kept."""

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.errors import HarnessError
from harness.store.fetch import PLACEHOLDER, fetch

BODY = b"prompt,seed\n" + b"a red ring,1\n" * 200
SHA = hashlib.sha256(BODY).hexdigest()


class Server:
    """GET /file (Content-Length, Range honoured), /endless (no Content-Length, never stops),
    /liar (announces 10**12 bytes), /slow (answers after 5 s); ``requests`` counts GETs."""

    def __init__(self):
        self.requests = []
        me = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                me.requests.append((self.path, self.headers.get("Range")))
                if self.path == "/file.csv":
                    start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                    self.send_response(206 if start else 200)
                    self.send_header("Content-Length", str(len(BODY) - start))
                    self.end_headers()
                    self.wfile.write(BODY[start:])
                elif self.path == "/endless.csv":
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(1000):
                            self.wfile.write(b"x" * 4096)
                    except OSError:
                        pass
                elif self.path == "/liar.csv":
                    self.send_response(200)
                    self.send_header("Content-Length", str(10**12))
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                elif self.path == "/slow.csv":
                    time.sleep(5)
                    self.send_response(200)
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("UNLEARN_TEST_ALLOW_LOOPBACK_HTTP", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("UNLEARN_OFFLINE", raising=False)
    for k in ("UNLEARN_DOWNLOAD_MAX_BYTES", "UNLEARN_MAX_DOWNLOAD_BYTES", "UNLEARN_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    for k in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = Server()
    yield s
    s.close()


def _one_line(e):
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    return str(e.value)


def _leftovers(cache):
    return sorted(p.relative_to(cache).as_posix() for p in (cache / "downloads").rglob("*") if p.is_file()) if (cache / "downloads").exists() else []


def test_a_pinned_file_lands_whole_in_its_content_addressed_place_once(server, tmp_path):
    p = fetch(server.url("file.csv"), SHA, tmp_path, "prompts.csv.url")
    assert p == tmp_path / "downloads" / SHA / "file.csv" and p.read_bytes() == BODY
    assert not list((tmp_path / "downloads" / "partial").glob("*"))  # no .part left behind
    n = len(server.requests)
    assert fetch(server.url("file.csv"), SHA, tmp_path, "prompts.csv.url") == p and len(server.requests) == n  # cached: no request
    p.write_bytes(b"damaged")  # a damaged cached copy is not served: it is fetched again
    assert fetch(server.url("file.csv"), SHA, tmp_path, "prompts.csv.url").read_bytes() == BODY and len(server.requests) == n + 1


def test_an_unpinned_file_is_kept_under_its_own_sha256_and_remembered(server, tmp_path):
    p = fetch(server.url("file.csv"), PLACEHOLDER, tmp_path, "x")
    assert p == tmp_path / "downloads" / SHA / "file.csv"
    n = len(server.requests)
    assert fetch(server.url("file.csv"), None, tmp_path, "x") == p and len(server.requests) == n


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(server, tmp_path):
    with pytest.raises(HarnessError) as e:
        fetch(server.url("file.csv"), "a" * 64, tmp_path, "checkpoint.url")
    msg = _one_line(e)
    assert msg.startswith("checkpoint.url: ") and f"has sha256 {SHA}, expected {'a' * 64}" in msg
    assert _leftovers(tmp_path) == []


def test_a_file_announced_over_the_cap_is_refused_before_its_body(server, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_DOWNLOAD_MAX_BYTES", "1000")
    with pytest.raises(HarnessError) as e:
        fetch(server.url("liar.csv"), "a" * 64, tmp_path, "checkpoint.url")
    assert "is 1000000000000 bytes, over the download cap of 1000" in _one_line(e)
    assert _leftovers(tmp_path) == []
    with pytest.raises(HarnessError, match="over the download cap of 1000"):  # an honest file over the cap too
        fetch(server.url("file.csv"), SHA, tmp_path, "checkpoint.url")


def test_a_stream_without_a_length_is_cut_at_the_cap(server, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_DOWNLOAD_MAX_BYTES", str(64 * 1024))
    with pytest.raises(HarnessError) as e:
        fetch(server.url("endless.csv"), "a" * 64, tmp_path, "checkpoint.url")
    assert f"sent more than the download cap of {64 * 1024} bytes" in _one_line(e)
    assert _leftovers(tmp_path) == []  # the partial file over the cap is removed, not kept to resume


def test_a_server_that_does_not_answer_times_out(server, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_DOWNLOAD_TIMEOUT", "0.5")
    t0 = time.monotonic()
    with pytest.raises(HarnessError) as e:
        fetch(server.url("slow.csv"), "a" * 64, tmp_path, "checkpoint.url")
    assert time.monotonic() - t0 < 4
    assert "checkpoint.url: could not download" in _one_line(e) and "run the command again to resume" in str(e.value)


def test_a_partial_file_is_continued_with_a_range_request(server, tmp_path):
    url = server.url("file.csv")
    part = tmp_path / "downloads" / "partial" / (hashlib.sha256(url.encode()).hexdigest()[:24] + "-file.csv.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:100])  # as an interrupted transfer left it
    assert fetch(url, SHA, tmp_path, "x").read_bytes() == BODY
    assert server.requests[-1] == ("/file.csv", "bytes=100-")


def test_offline_a_missing_file_is_one_line_and_nothing_is_requested(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError) as e:
        fetch(server.url("file.csv"), SHA, tmp_path, "prompts.csv.url")
    assert "is not cached and this run is offline" in _one_line(e) and server.requests == []


@pytest.mark.parametrize("env, value", [("UNLEARN_DOWNLOAD_TIMEOUT", "soon"), ("UNLEARN_DOWNLOAD_MAX_BYTES", "1GB")])
def test_a_bad_limit_setting_is_one_line(server, tmp_path, monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(HarnessError) as e:
        fetch(server.url("file.csv"), SHA, tmp_path, "x")
    assert "not a number" in _one_line(e)
