"""Files named by https URL + sha256 (checkpoints, prompt sets): downloaded once into the
cache at run time, verified, never committed. Offline runs (HF_HUB_OFFLINE=1 or
UNLEARN_OFFLINE=1) use the cache only."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from .errors import HarnessError
from .hashing import sha256_file


def fetch(url: str, sha256: str, cache_dir: Path, what: str) -> Path:
    name = Path(url.split("?")[0]).name or "download"
    local = Path(cache_dir) / "downloads" / sha256 / name
    if not local.exists():
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("UNLEARN_OFFLINE") == "1":
            raise HarnessError(f"{what}: {url} is not cached and this run is offline")
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")
        try:
            urllib.request.urlretrieve(url, part)
        except OSError as e:
            raise HarnessError(f"{what}: could not download {url}: {e}") from None
        got = sha256_file(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise HarnessError(f"{what}: {url} has sha256 {got}, expected {sha256}")
        part.replace(local)
    return local
