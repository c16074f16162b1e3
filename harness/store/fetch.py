"""The one downloader: files named by URL (checkpoints, prompt CSVs) into the harness cache, and
the limits every download keeps, hub files included (``harness/store/hub.py`` reads them here).

Layout: ``<cache>/downloads/<sha256>/<name>`` (content-addressed: the run looks there);
``downloads/partial/`` holds unfinished ``.part`` files, continued with a Range request on the
next try; ``downloads/by-url/<sha256 of the URL>`` remembers which file an unpinned URL gave
(``unlearn fetch`` before ``unlearn pin``). A file reaches its place only whole and verified
(renamed from its ``.part``), so a reader never sees half of one.

Limits (docs/security.md), read by ``limits()`` and nowhere else:
- https only, no whitespace / control characters, no credentials in the URL, and where bytes are
  fetched a host on the allow-list (``$UNLEARN_DOWNLOAD_HOSTS``, comma-separated, replaces
  ``DEFAULT_HOSTS``; a leading ``.`` allows a domain's subdomains). Plain http to 127.0.0.1 /
  localhost only under ``UNLEARN_TEST_ALLOW_LOOPBACK_HTTP=1`` (the tests' stand-in servers);
- every redirect target checked by the same rule before it is followed (at most 5);
- a connect / read timeout (``$UNLEARN_DOWNLOAD_TIMEOUT`` seconds, default 60), the response
  started within one timeout, a deadline per file (``$UNLEARN_DOWNLOAD_DEADLINE``, 6 h) and a
  minimum average rate (``$UNLEARN_DOWNLOAD_MIN_RATE``, 16 KiB/s): a watchdog shuts the socket
  down, so a server trickling bytes cannot hold a run; every setting finite and in range;
- a size cap (``$UNLEARN_DOWNLOAD_MAX_BYTES``; ``$UNLEARN_MAX_DOWNLOAD_BYTES`` is read as the
  same setting; default 20 GiB for one file or one hub snapshot), checked against the announced
  length and again while reading, so a server that never answers or never stops cannot hang or
  fill a run;
- a pinned sha256 checked before the file is kept; a mismatch removes it.
Offline (``HF_HUB_OFFLINE`` or ``UNLEARN_OFFLINE`` set to 1 / true / yes / on) nothing is
downloaded: a missing file is one line naming it. Every failure is one line naming the file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from harness.errors import HarnessError
from harness.store.hashing import sha256_file
from harness.store.fsutil import atomic_write

PLACEHOLDER = "0" * 64  # the sha256 of a file not pinned yet (suites carry it until `unlearn pin`)
LOOPBACK_ENV = "UNLEARN_TEST_ALLOW_LOOPBACK_HTTP"
DEFAULT_HOSTS = ("huggingface.co", ".huggingface.co", ".hf.co", "github.com", "objects.githubusercontent.com",
                 "raw.githubusercontent.com", "zenodo.org", ".zenodo.org")
DEFAULT_MAX_BYTES = 20 << 30
_CHUNK = 1 << 16


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "UNLEARN_OFFLINE"))


DEFAULT_DEADLINE_S = 6 * 3600  # one file, start to end
DEFAULT_MIN_RATE = 16 << 10  # bytes per second, averaged from the first byte on (after a grace of one timeout)
MAX_TIMEOUT_S = 24 * 3600


def _env_number(name: str, default, lo: float, hi: float, integer: bool = False):
    """A positive, finite number from the environment (``inf``, ``nan``, ``-1``, ``1e999`` and
    words refused in one line naming the variable)."""
    import math

    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        v = int(raw) if integer else float(raw)
    except ValueError:
        raise HarnessError(f"{name}: {raw[:40]!r} is not a number" + (" of bytes" if integer else "")) from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise HarnessError(f"{name}: {raw[:40]!r} is outside {lo:g}..{hi:g}")
    return v


def limits() -> tuple[float, int]:
    """(timeout in seconds, size cap in bytes) from the environment; a bad value is one line."""
    cap_name = "UNLEARN_DOWNLOAD_MAX_BYTES" if os.environ.get("UNLEARN_DOWNLOAD_MAX_BYTES") else "UNLEARN_MAX_DOWNLOAD_BYTES"
    return (_env_number("UNLEARN_DOWNLOAD_TIMEOUT", 60.0, 0.001, MAX_TIMEOUT_S),
            _env_number(cap_name, DEFAULT_MAX_BYTES, 1, 1 << 50, integer=True))


def pace() -> tuple[float, float]:
    """(overall deadline of one file in seconds, minimum average rate in bytes per second):
    ``$UNLEARN_DOWNLOAD_DEADLINE`` (default 6 h), ``$UNLEARN_DOWNLOAD_MIN_RATE`` (default 16 KiB/s),
    so a server that trickles bytes (one a second resets every read timeout) cannot hang a run."""
    return (_env_number("UNLEARN_DOWNLOAD_DEADLINE", float(DEFAULT_DEADLINE_S), 0.001, 30 * 24 * 3600.0),
            _env_number("UNLEARN_DOWNLOAD_MIN_RATE", float(DEFAULT_MIN_RATE), 0.0, 1e12))


def timeout_s() -> float:
    return limits()[0]


def max_bytes() -> int:
    return limits()[1]


def check_size(size: int | None, what: str, name: str) -> None:
    """Refuse a file (or a snapshot's total) over the size cap."""
    if size is not None and size > max_bytes():
        raise HarnessError(f"{what}: {name} is {size} bytes, over the download cap of {max_bytes()} (UNLEARN_DOWNLOAD_MAX_BYTES)")


def allowed_hosts() -> tuple[str, ...]:
    env = os.environ.get("UNLEARN_DOWNLOAD_HOSTS")
    return tuple(h.strip().lower() for h in env.split(",") if h.strip()) if env else DEFAULT_HOSTS


def check_url(url: str, what: str, host_list: bool = False) -> str:
    """The URL itself, or a one-line error: https with a host, no whitespace or control
    characters, a valid port, no credentials; with ``host_list`` a host on the allow-list."""
    if not isinstance(url, str) or re.search(r"[\x00-\x20\x7f]", url):
        raise HarnessError(f"{what}: {url!r:.120} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port out of range)
        host = (parts.hostname or "").lower()
    except ValueError as e:
        raise HarnessError(f"{what}: {url!r:.120} is not a valid URL ({e})") from None
    if parts.scheme == "http" and host in ("127.0.0.1", "localhost") and os.environ.get(LOOPBACK_ENV) == "1":
        return url  # the tests' stand-in servers only: an explicit, test-only allowance
    if parts.scheme != "https" or not host:
        raise HarnessError(f"{what}: {url!r:.120} is not an https URL")
    if parts.username or parts.password:
        raise HarnessError(f"{what}: {url!r:.120} carries credentials")
    if host_list and not any(host == h or (h.startswith(".") and host.endswith(h)) for h in allowed_hosts()):
        raise HarnessError(f"{what}: host {host!r} is not on the download allow-list ({', '.join(allowed_hosts())}; $UNLEARN_DOWNLOAD_HOSTS sets it)")
    return url


def file_name(url: str) -> str:
    """The last path segment of the URL as a safe file name (``download`` if it has none)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(urlsplit(url).path).name)[:100].lstrip(".") or "download"


def progress_bar(progress: bool, total, initial, name):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, disable=not progress, leave=False)


def fetch(url: str, sha256: str | None, cache_dir: Path, what: str, progress: bool = False) -> Path:
    """The file behind ``url`` in ``<cache>/downloads/<sha256>/<name>``: from the cache when a
    verified copy is there, else downloaded (resuming a ``.part`` file) within the limits above.
    ``sha256`` None / placeholder: the file is kept under the sha256 it has (``unlearn pin``)."""
    check_url(url, what)  # also offline: a bad URL is a bad input whether or not it is fetched
    name = file_name(url)
    downloads = Path(cache_dir) / "downloads"
    pinned = bool(sha256) and sha256 != PLACEHOLDER
    url_key = hashlib.sha256(url.encode()).hexdigest()
    seen = downloads / "by-url" / url_key
    if not pinned and seen.is_file():  # not pinned yet: the file this URL gave last time
        sha256 = seen.read_text().strip()
    if sha256 and sha256 != PLACEHOLDER:
        local = downloads / sha256 / name
        if local.is_file():
            if sha256_file(local) == sha256:
                return local
            local.unlink()  # a damaged copy in a content-addressed place: fetched again
    if offline():
        raise HarnessError(f"{what}: {url} is not cached and this run is offline; get it with: unlearn fetch {url}")
    check_url(url, what, host_list=True)  # the host list matters where bytes are fetched
    part = downloads / "partial" / (url_key[:24] + "-" + name + ".part")
    _download(url, part, what, progress, name)
    got = sha256_file(part)
    if pinned and got != sha256:
        part.unlink(missing_ok=True)
        raise HarnessError(f"{what}: {url} has sha256 {got}, expected {sha256}")

    local = downloads / got / name
    local.parent.mkdir(parents=True, exist_ok=True)
    part.replace(local)  # same file system: the whole, verified file appears at once
    atomic_write(seen, (got + "\n").encode())
    return local


class _Watch:
    """A watchdog over one download's sockets: past ``deadline`` (monotonic seconds) it shuts
    them down, which wakes a read blocked on a server that sends nothing or one byte at a time
    (a socket timeout is per read, so it alone cannot bound a transfer)."""

    socks: list

    def __init__(self, deadline: float):
        import threading

        self.deadline, self.socks, self.fired, self._stop = deadline, [], False, threading.Event()
        threading.Thread(target=self._run, daemon=True, name="unlearn-fetch-watch").start()

    def _run(self):
        import socket
        import time

        while not self._stop.wait(0.05):
            if time.monotonic() > self.deadline:
                self.fired = True
                for sk in list(self.socks):
                    try:
                        sk.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    def stop(self):
        self._stop.set()


def _opener(watch: _Watch, what: str):
    """urllib with every redirect target re-checked by ``check_url`` (https, no credentials, a
    host on the allow-list; a plain-http or foreign target is refused, not followed), at most 5
    redirects, and every connection's socket under the watchdog."""

    def tracked(base):
        class C(base):
            def connect(self):
                super().connect()
                watch.socks.append(self.sock)
        return C

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = 5

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            from urllib.parse import urljoin

            check_url(urljoin(req.full_url, newurl), f"{what} (redirect)", host_list=True)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(tracked(http.client.HTTPSConnection), req, context=self._context)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(tracked(http.client.HTTPConnection), req)

    return urllib.request.build_opener(Redirects, Https, Http)


def _download(url: str, part: Path, what: str, progress: bool, name: str) -> None:
    """``url`` into ``part``, continuing what it holds with a Range request. A transfer that
    stops keeps ``part`` for the next try; one over the cap removes it. Bounded in time three
    ways: each read (the timeout), the response's start (connect, redirects and headers within
    one timeout) and the whole file (the deadline, and the minimum average rate after a grace
    of one timeout), so no server can hold a run."""
    import time

    timeout, cap = limits()
    deadline_s, min_rate = pace()
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    t0 = time.monotonic()
    watch = _Watch(t0 + min(timeout, deadline_s))
    try:
        with _opener(watch, what).open(req, timeout=timeout) as r:
            watch.deadline = t0 + deadline_s
            final = r.geturl()
            if final != url:
                check_url(final, f"{what} (redirect)", host_list=True)
            if have and r.status != 206:
                have = 0  # the server ignored the range: start again
            length = r.headers.get("Content-Length")
            total = int(length) + have if length and length.isdigit() and len(length) < 20 else None
            check_size(total, what, url)
            bar = progress_bar(progress, total, have, name)
            t_body = time.monotonic()
            with open(part, "ab" if have else "wb") as f:
                n, got = have, 0
                while chunk := r.read1(_CHUNK):
                    n += len(chunk)
                    got += len(chunk)
                    if n > cap:
                        raise HarnessError(f"{what}: {url} sent more than the download cap of {cap} bytes (UNLEARN_DOWNLOAD_MAX_BYTES)")
                    f.write(chunk)
                    bar.update(len(chunk))
                    elapsed = time.monotonic() - t_body
                    if elapsed > timeout and got < min_rate * elapsed:
                        raise OSError(f"slower than the minimum rate of {min_rate:g} bytes/s (UNLEARN_DOWNLOAD_MIN_RATE): "
                                      f"{got} bytes in {elapsed:.0f} s")
                    if time.monotonic() - t0 > deadline_s:
                        raise OSError(f"past the deadline of {deadline_s:g} s (UNLEARN_DOWNLOAD_DEADLINE)")
            bar.close()
        if watch.fired:
            raise OSError(f"past the deadline of {deadline_s:g} s (UNLEARN_DOWNLOAD_DEADLINE) or the timeout of {timeout:g} s")
    except HarnessError:
        part.unlink(missing_ok=True)
        raise
    except (OSError, ValueError, OverflowError, http.client.HTTPException, urllib.error.URLError) as e:  # timeouts are OSError too
        err: BaseException = e
        if watch.fired:
            err = OSError(f"no complete answer within the timeout of {timeout:g} s / the deadline of {deadline_s:g} s (UNLEARN_DOWNLOAD_DEADLINE)")
        detail = " ".join(str(getattr(err, "reason", err)).split())[:200] or "no detail"
        raise HarnessError(f"{what}: could not download {url} ({type(err).__name__}: {detail}); run the command again to resume") from None
    finally:
        watch.stop()
    if total is not None and part.stat().st_size != total:
        raise HarnessError(f"{what}: {url}: the download stopped at {part.stat().st_size} of {total} bytes; run the command again to resume")
