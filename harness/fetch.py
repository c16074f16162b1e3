"""Files named by https URL + sha256 (checkpoints, prompt sets): downloaded once into the
cache at run time, verified, never committed. Offline runs (HF_HUB_OFFLINE=1 or
UNLEARN_OFFLINE=1) use the cache only.

Every download is limited (docs/security.md): https only, to a host on the allow-list
(``$UNLEARN_DOWNLOAD_HOSTS``, comma-separated, replaces ``DEFAULT_HOSTS``; a leading ``.``
allows a domain's subdomains), with a connect / read timeout (``$UNLEARN_DOWNLOAD_TIMEOUT``
seconds, default 60) and a size cap (``$UNLEARN_DOWNLOAD_MAX_BYTES``, default 20 GiB) checked
while reading, so a server that never answers or never stops cannot hang or fill a run.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .errors import HarnessError
from .hashing import sha256_file

DEFAULT_HOSTS = ("huggingface.co", ".huggingface.co", ".hf.co", "github.com", "objects.githubusercontent.com",
                 "raw.githubusercontent.com", "zenodo.org", ".zenodo.org")
_CHUNK = 1 << 20


def allowed_hosts() -> tuple[str, ...]:
    env = os.environ.get("UNLEARN_DOWNLOAD_HOSTS")
    return tuple(h.strip().lower() for h in env.split(",") if h.strip()) if env else DEFAULT_HOSTS


def _limits() -> tuple[float, int]:
    try:
        return float(os.environ.get("UNLEARN_DOWNLOAD_TIMEOUT", 60)), int(os.environ.get("UNLEARN_DOWNLOAD_MAX_BYTES", 20 << 30))
    except ValueError:
        raise HarnessError("UNLEARN_DOWNLOAD_TIMEOUT / UNLEARN_DOWNLOAD_MAX_BYTES: not a number") from None


def check_url(url: str, what: str, host_list: bool = True) -> str:
    """The URL's host, or a one-line error: https, no whitespace or control characters, a valid
    port, a host on the allow-list."""
    if not isinstance(url, str) or re.search(r"[\x00-\x20\x7f]", url):
        raise HarnessError(f"{what}: {url!r:.120} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").lower()
    except ValueError as e:
        raise HarnessError(f"{what}: {url!r:.120} is not a valid URL ({e})") from None
    from .hub import LOOPBACK_ENV

    if parts.scheme == "http" and host in ("127.0.0.1", "localhost") and os.environ.get(LOOPBACK_ENV) == "1":
        return host  # the tests' stand-in servers only: an explicit, test-only allowance (harness.hub)
    if parts.scheme != "https" or not host:
        raise HarnessError(f"{what}: {url!r:.120} is not an https URL with a host")
    if parts.username or parts.password:
        raise HarnessError(f"{what}: {url!r:.120} carries credentials")
    ok = not host_list or any(host == h or (h.startswith(".") and host.endswith(h)) for h in allowed_hosts())
    if not ok:
        raise HarnessError(f"{what}: host {host!r} is not on the download allow-list ({', '.join(allowed_hosts())}; $UNLEARN_DOWNLOAD_HOSTS sets it)")
    del port
    return host


def _download(url: str, part: Path, what: str) -> None:
    timeout, cap = _limits()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:  # noqa: S310 (https checked)
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cap:
                raise HarnessError(f"{what}: {url} is {int(length)} bytes, more than the cap of {cap}")
            n = 0
            while chunk := r.read(_CHUNK):
                n += len(chunk)
                if n > cap:
                    raise HarnessError(f"{what}: {url} sent more than the cap of {cap} bytes")
                f.write(chunk)
    except HarnessError:
        part.unlink(missing_ok=True)
        raise
    except (OSError, ValueError, urllib.error.URLError) as e:  # timeouts are OSError too
        part.unlink(missing_ok=True)
        raise HarnessError(f"{what}: could not download {url}: {' '.join(str(getattr(e, 'reason', e)).split())[:200]}") from None


def fetch(url: str, sha256: str, cache_dir: Path, what: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urlsplit(url).path if isinstance(url, str) else "").name)[:100].lstrip(".") or "download"
    local = Path(cache_dir) / "downloads" / sha256 / name
    check_url(url, what, host_list=False)  # also offline: a bad URL is a bad input whether or not it is fetched
    if not local.exists():
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("UNLEARN_OFFLINE") == "1":
            raise HarnessError(f"{what}: {url} is not cached and this run is offline")
        check_url(url, what)  # the host list matters where bytes are fetched (a cached file is pinned by sha256)
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")
        _download(url, part, what)
        got = sha256_file(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise HarnessError(f"{what}: {url} has sha256 {got}, expected {sha256}")
        part.replace(local)
    return local
