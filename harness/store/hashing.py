"""sha256 of files, folders and canonical JSON: the identities the harness pins and records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.errors import HarnessError
from harness.store.safefs import hf_cache_repo, tree_files

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, follow: bool = True) -> str:
    """sha256 of a regular file's bytes. The file is opened once, non-blocking (a FIFO swapped
    in after any earlier check cannot block the open) and, with ``follow=False``, without
    following a final symbolic link; the opened file itself is checked (``fstat``), so a FIFO,
    socket, device or folder is refused in one line and what is hashed is what was checked."""
    import os
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as e:
        import errno

        if e.errno == errno.ELOOP:
            raise HarnessError(f"{path}: a symbolic link (refused without following it)") from None
        if e.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV):
            raise HarnessError(f"{path}: not a regular file (refused)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HarnessError(f"{path}: not a regular file (refused without reading it)")
        h = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    finally:
        if fd >= 0:
            os.close(fd)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """A folder's identity: sha256 over its sorted (relative path, file sha256) manifest of
    every regular file in it, hidden ones included (loaders read those too). A symbolic link or a
    non-regular file anywhere inside is refused (``safefs.tree_files``), so the hash covers
    exactly what can be loaded."""
    root = Path(path)
    follow = hf_cache_repo(root) is not None  # a cache snapshot's files are links into its blobs/ (tree_files checked them)
    lines = [f"{p.relative_to(root).as_posix()}\t{sha256_file(p, follow=follow)}\n" for p in tree_files(root, f"folder {root.name}")]
    return sha256_bytes("".join(lines).encode())


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj) -> str:
    return sha256_bytes(canonical_json(obj).encode())
