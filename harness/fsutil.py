"""Atomic file writes: a reader (or a re-run after kill -9) sees the old file or the new one,
never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir(root: str | Path, option: str | Path | None = None) -> Path:
    """The image / download cache: the option given, else $UNLEARN_CACHE, else
    ``.unlearn-cache`` in the repository (the plugin, ``unlearn check`` and ``refresh`` agree)."""
    return Path(option or os.environ.get("UNLEARN_CACHE") or Path(root) / ".unlearn-cache")
