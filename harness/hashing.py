"""sha256 of files, folders and canonical JSON: the identities the harness pins and records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# In-process memo: a checkpoint is verified when pytest starts and again when its suite runs,
# and a base folder is fingerprinted once per suite; multi-GB files should be read once. Keyed
# by the file's identity and stat signature, so a rewritten file is hashed again.
_MEMO: dict[tuple, str] = {}


def sha256_file(path: str | Path) -> str:
    """sha256 of a regular file's bytes; a FIFO, socket or device is refused without opening it."""
    import stat

    from .errors import HarnessError

    st = Path(path).stat()
    if not stat.S_ISREG(st.st_mode):
        raise HarnessError(f"{path}: not a regular file (refused without opening it)")
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    _MEMO[key] = h.hexdigest()
    return _MEMO[key]


def sha256_tree(path: str | Path) -> str:
    """A folder's identity: sha256 over its sorted (relative path, file sha256) manifest of
    every regular file in it, hidden ones included (loaders read those too). A symbolic link or a
    non-regular file anywhere inside is refused (``safefs.tree_files``), so the hash covers
    exactly what can be loaded."""
    from .safefs import tree_files

    root = Path(path)
    lines = [f"{p.relative_to(root).as_posix()}\t{sha256_file(p)}\n" for p in tree_files(root, f"folder {root.name}")]
    return sha256_bytes("".join(lines).encode())


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj) -> str:
    return sha256_bytes(canonical_json(obj).encode())
