"""Atomic file writes: a reader (or a re-run after kill -9) sees the old file or the new one,
never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import HarnessError


def atomic_write(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())  # mkstemp makes 0600; a file is readable as open() would make it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


OWNED = ".unlearn-owned"  # written by a command into an output folder it made: only such a folder is emptied or overwritten


def claim_dir(path: str | Path, what: str, command: str) -> Path:
    """An output folder ``command`` may write into and replace its own files in: a new folder
    (made, and marked with ``OWNED`` naming the command), an empty one (marked), or one an earlier
    run of the same command marked. Anything else (a folder with other files, a built site, a
    checkpoint folder, a link, a file) is refused in one line, so no command deletes or overwrites
    what it did not make."""
    p = Path(path)
    if p.is_symlink():
        raise HarnessError(f"{what} {p}: a symbolic link; give a new or empty folder")
    if p.exists():
        if not p.is_dir():
            raise HarnessError(f"{what} {p}: exists and is not a folder")
        marker = p / OWNED
        try:
            mine = marker.is_file() and not marker.is_symlink() and marker.read_text(encoding="utf-8", errors="replace").strip() == command
        except OSError:
            mine = False
        if mine:
            return p
        if any(p.iterdir()):
            raise HarnessError(f"{what} {p}: a folder with files `{command}` did not make (no {OWNED} of it there); "
                               "give a new or empty folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        (p / OWNED).write_text(command + "\n", encoding="utf-8")
    except OSError as e:
        raise HarnessError(f"{what} {p}: cannot be made ({e.strerror or e})") from None
    return p


def remove_inside(owned: str | Path, target: str | Path) -> None:
    """Remove ``target``, a path inside the folder ``owned`` that a command claimed
    (:func:`claim_dir`), unless a component below ``owned`` is a symbolic link: a marked folder
    is trusted for what it holds, never for where a link inside it points (``rmtree`` through a
    linked parent would delete the link's target's files)."""
    import shutil

    owned, target = Path(owned), Path(target)
    try:
        rel = target.relative_to(owned)
    except ValueError:
        raise HarnessError(f"{target}: not inside {owned}; not removed") from None
    p = owned
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            raise HarnessError(f"{p}: a symbolic link inside {owned}; not removed (remove it by hand)")
        if not p.exists():
            return
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()


def default_mode(folder: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give under the current umask (0644 / 0755 with
    the usual 022), for files made through ``mkstemp`` / ``mkdtemp`` (0600 / 0700), so that a
    web server or CI step running as another user can read results, checkpoints and sites."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def cache_dir(root: str | Path, option: str | Path | None = None) -> Path:
    """The image / download cache: the option given, else $UNLEARN_CACHE, else
    ``.unlearn-cache`` in the repository (the plugin, ``unlearn check`` and ``refresh`` agree)."""
    return Path(option or os.environ.get("UNLEARN_CACHE") or Path(root) / ".unlearn-cache")


ROOT_MARKERS = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def find_root(files=(), start: str | Path | None = None) -> Path:
    """The repository root as pytest finds its rootdir: the nearest folder, from the common
    ancestor of ``files`` (else the current folder) upwards, holding pytest.ini, pyproject.toml,
    tox.ini or setup.cfg (and a ``suites/`` folder beside it, when one up the tree has one);
    else the current folder. So ``unlearn check ../submissions/x.yaml`` from a subfolder sees
    the same root, suites and cache as ``pytest`` does."""
    cwd = Path(start or Path.cwd()).resolve()
    dirs = [(cwd / f).resolve().parent for f in files] or [cwd]
    common = Path(os.path.commonpath([str(d) for d in dirs])) if dirs else cwd
    candidates = [d for d in (common, *common.parents) if any((d / m).is_file() for m in ROOT_MARKERS)]
    with_suites = [d for d in candidates if (d / "suites").is_dir()]
    if with_suites:
        return with_suites[0]
    if candidates:
        return candidates[0]
    return cwd
