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
    st = Path(path).stat()
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
    """A folder's identity: sha256 over its sorted (relative path, file sha256) manifest.

    Hidden files and ``__pycache__`` are left out so that the hash depends on content only."""
    root = Path(path)
    lines = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            lines.append(f"{rel.as_posix()}\t{sha256_file(p)}\n")
    return sha256_bytes("".join(lines).encode())


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj) -> str:
    return sha256_bytes(canonical_json(obj).encode())
