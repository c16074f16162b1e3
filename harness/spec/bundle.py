"""Submission sets: one YAML naming several submission files, so that the name people type
(``submissions/uce.yaml``) evaluates a method on every target it was submitted for.

A submission is one checkpoint erasing its targets; the toy reference methods erase the style
``striped`` and the object ``triangle`` with two separate checkpoints, so "UCE on both targets"
is two submissions. A set file holds only::

    description: UCE on the toy world, both targets   # optional
    submissions: [submissions/toy-uce-style.yaml, submissions/toy-uce-object.yaml]

The pytest plugin, ``unlearn check`` and ``unlearn validate`` expand it to its members (each
evaluated and written as its own results JSON, exactly as if named one by one). Members are
paths inside the repository to ordinary submission files (a set inside a set is refused), so
nothing about what a submission is changes. A path that does not exist is a one-line error that
names the nearest existing submission files.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from harness.errors import HarnessError
from harness.spec import inside, read_yaml

KEYS = {"submissions", "description"}


def is_set(data: dict) -> bool:
    return isinstance(data, dict) and "submissions" in data and "name" not in data


def suggestions(path: str | Path, root: Path, n: int = 3) -> list[str]:
    """The existing submission files nearest to ``path`` (by name, then by whole path)."""
    root = Path(root)
    have = sorted(p.relative_to(root).as_posix() for p in (root / "submissions").glob("*.y*ml")) if (root / "submissions").is_dir() else []
    want = Path(path).as_posix()
    by_name = {Path(h).stem: h for h in have}
    near = [by_name[s] for s in difflib.get_close_matches(Path(want).stem, list(by_name), n=n, cutoff=0.3)]
    near += [h for h in difflib.get_close_matches(want, have, n=n, cutoff=0.3) if h not in near]
    return near[:n]


def missing(path: str | Path, root: Path) -> HarnessError:
    near = suggestions(path, root)
    hint = f" (did you mean {', '.join(near)}?)" if near else " (no submission files in submissions/)"
    return HarnessError(f"{path}: no such file{hint}")


def expand(path: str | Path, root: Path) -> list[str]:
    """The submission files ``path`` stands for: itself, or a set's members (paths relative to
    the repository root when that is the current folder, else absolute). One-line errors for a missing file (with suggestions), unknown
    keys, members outside the repository, missing or nested members."""
    root = Path(root)
    p = Path(path)
    if not p.is_file():
        if p.is_symlink() or p.exists():  # a FIFO, a device, a folder, a dangling link: never opened
            raise HarnessError(f"{path}: not a regular file")
        raise missing(path, root)
    data = read_yaml(p)
    if not is_set(data):
        return [str(path)]
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise HarnessError(f"{path}: {unknown[0]}: unknown key in a submission set (it holds only: submissions, description)")
    members = data["submissions"]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise HarnessError(f"{path}: submissions: expected a non-empty list of submission file paths")
    out = []
    for i, m in enumerate(members):
        q = inside(root, m, f"{path}: submissions.{i}")
        if not q.is_file():
            raise HarnessError(f"{path}: submissions.{i}: {m}: no such file" + (f" (did you mean {', '.join(suggestions(m, root))}?)" if suggestions(m, root) else ""))
        if is_set(read_yaml(q)):
            raise HarnessError(f"{path}: submissions.{i}: {m} is itself a submission set (sets do not nest)")
        here = m if Path.cwd().resolve() == root.resolve() else str(q)  # as the member is opened from the current folder
        if here not in out:
            out.append(here)
    return out


def expand_all(paths, root: Path) -> list[str]:
    out: list[str] = []
    for p in paths:
        for m in expand(p, root):
            if m not in out:
                out.append(m)
    return out
