"""The file-system side of the trust boundary: what a folder or file a pull request controls may
be before the harness hashes or loads it (docs/security.md).

Policy (chosen over "resolve, confine, then hash"): inside a checkpoint, base or results folder
every entry must be a regular file or a plain folder. A symbolic link, FIFO, socket or device
anywhere in it is refused, because what the hash covers must be exactly what diffusers, safetensors
or the site reads, and a link can be re-pointed after the hash. Hidden files are hashed like any
other (diffusers follows a shard index to ``unet/.shard.safetensors``). A FIFO is detected with
``lstat`` and never opened, so it cannot hang a run.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import HarnessError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
LIBRARIES = {"diffusers", "transformers"}  # what a model_index.json may name (others would be imported)


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file (symbolic links followed: confinement is ``spec.inside``'s
    job); a FIFO, socket, device or folder is refused without being opened."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except (OSError, ValueError) as e:
        raise HarnessError(f"{what}: {p}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(mode):
        raise HarnessError(f"{what}: {p.name} is {kind_of(mode)}, not a regular file")
    return p


def hf_cache_repo(root: Path) -> Path | None:
    """The ``models--owner--name`` folder of a Hugging Face cache when ``root`` lies in one of its
    ``snapshots/<commit>/`` folders (huggingface_hub's layout: snapshot files are symbolic links
    to ``../../blobs/<hash>``), else None."""
    parts = Path(os.path.abspath(root)).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith(("models--", "datasets--", "spaces--")) and i + 1 < len(parts):
            return Path(*parts[:i])
    return None


def _cache_blob(link: Path, repo: Path | None) -> bool:
    """A snapshot link of the Hugging Face cache: it resolves to a regular file in the same
    repository's ``blobs/`` (what huggingface_hub wrote, verified when fetched)."""
    if repo is None:
        return False
    try:
        target = Path(os.path.realpath(link))
        blobs = Path(os.path.realpath(repo / "blobs"))
        return target.is_relative_to(blobs) and stat.S_ISREG(os.stat(target).st_mode)
    except (OSError, ValueError):
        return False


def tree_files(root: str | Path, what: str) -> list[Path]:
    """Every regular file under the folder ``root`` (hidden ones included), sorted; refuses (one
    line) a symbolic link or a non-regular file anywhere inside it. The one exception is a
    Hugging Face cache snapshot, whose files are links into the same repository's ``blobs/``:
    those links (and only those) are followed."""
    root = Path(root)
    repo = hf_cache_repo(root)
    out: list[Path] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            raise HarnessError(f"{what}: {d}: cannot be listed ({e.strerror or e})") from None
        for e in entries:
            p = Path(e.path)
            mode = e.stat(follow_symlinks=False).st_mode
            rel = p.relative_to(root).as_posix()
            if stat.S_ISDIR(mode):
                stack.append(p)
            elif stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and _cache_blob(p, repo)):
                out.append(p)
            else:
                raise HarnessError(f"{what}: {rel} inside {root.name}/ is {kind_of(mode)} (only regular files and folders are accepted)")
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def check_model_folder(path: Path, what: str, allow_pickle: bool) -> None:
    """A checkpoint folder (pipeline or LoRA): no pickle file unless allowed, and a
    ``model_index.json`` that names only diffusers / transformers classes."""
    import json

    files = tree_files(path, what)
    if not allow_pickle:
        for f in files:
            if f.suffix.lower() in PICKLE_SUFFIXES:
                raise HarnessError(f"{what}: {f.relative_to(path).as_posix()} is a pickle format ({f.suffix}), which can run code when loaded; "
                                   "convert it to safetensors, or allow it for a local run you trust (--unlearn-allow-pickle, unlearn check --allow-pickle)")
    index = path / "model_index.json"
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HarnessError(f"{what}: model_index.json is not JSON") from None
        if not isinstance(data, dict):
            raise HarnessError(f"{what}: model_index.json is not a JSON object")
        for k, v in data.items():
            if k.startswith("_"):
                continue
            if isinstance(v, list) and v and v[0] is not None and v[0] not in LIBRARIES:
                raise HarnessError(f"{what}: model_index.json: {k}: library {str(v[0])[:40]!r} is not one of {', '.join(sorted(LIBRARIES))}")
