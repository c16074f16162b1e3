"""``unlearn pr-check --base SHA --head SHA``: what a submission pull request may change, checked
from git itself before anything of the PR is read or run (docs/security.md).

A submission PR may add or change files under ``submissions/`` only (its YAML and its toy
checkpoint folder, ``submissions/checkpoints/<name>/``). Refused, one line each naming the path
(exit 2): a change anywhere else (harness, suites, thresholds, baselines, workflows, tests); a
tracked image cache, results or regression folder anywhere in the tree (``.unlearn-cache/``,
``results/``, ``.regression*``); a symbolic link or submodule among the changed paths; two
submission YAMLs that give one ``name``. Renames are seen as a deletion plus an addition
(``--no-renames``), so a renamed and edited submission is listed like a new one: nothing is
filtered by change type. Prints the submission YAMLs to evaluate, one per line: those added or
changed, and those whose checkpoint folder or method record changed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import yaml

from .errors import HarnessError

ALLOWED_PREFIX = "submissions/"
FORBIDDEN_TOP = ("results", "site")  # made by runs, never committed by a PR
FORBIDDEN_ANYWHERE = (".unlearn-cache",)
MAX_SUBMISSION_BYTES = 1 << 20


def _git(root: Path, *args: str) -> bytes:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"git {args[0]}: could not run ({e})") from None
    if out.returncode != 0:
        raise HarnessError(f"git {' '.join(args[:2])}: {out.stderr.decode(errors='replace').strip().splitlines()[-1:] or ['failed']}")
    return out.stdout


def changed_paths(root: Path, base: str, head: str) -> list[tuple[str, str]]:
    """(status letter, path) of every path the PR changed since it left the base branch (the
    merge base, ``base...head``: a branch behind the base is not blamed for the base's newer
    commits), renames split into D + A."""
    raw = _git(root, "diff", "--name-status", "--no-renames", "-z", f"{base}...{head}", "--").split(b"\0")
    items = [x.decode("utf-8", errors="surrogateescape") for x in raw if x]
    return [(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]


def tree(root: Path, head: str) -> dict[str, str]:
    """path -> git mode of every entry of ``head``'s tree (100644 file, 120000 link, 160000 submodule)."""
    out = {}
    for line in _git(root, "ls-tree", "-r", "-z", "--full-tree", head).split(b"\0"):
        if line:
            meta, path = line.split(b"\t", 1)
            out[path.decode("utf-8", errors="surrogateescape")] = meta.split()[0].decode()
    return out


def forbidden_tracked(path: str) -> str | None:
    """Why a tracked path is a run's output that no commit may carry: ``results/`` or ``site/``
    at the top or anywhere under submissions/, an image cache or regression folder anywhere."""
    parts = PurePosixPath(path).parts
    if parts and parts[0] in FORBIDDEN_TOP:
        return f"{parts[0]}/ is made by runs and never committed"
    for p in parts[:-1]:
        if p in FORBIDDEN_ANYWHERE or p.startswith(".regression") or (parts[0] == "submissions" and p in FORBIDDEN_TOP):
            return f"{p}/ is a cache or run folder: CI never reads images or results a pull request carries"
    return None


def _submission_of(root: Path, head: str, path: str) -> dict | None:
    try:
        text = _git(root, "show", f"{head}:{path}")
    except HarnessError:
        return None
    if len(text) > MAX_SUBMISSION_BYTES:
        raise HarnessError(f"{path}: larger than {MAX_SUBMISSION_BYTES >> 20} MiB")
    try:
        from .spec import _SafeUniqueLoader

        data = yaml.load(text.decode("utf-8"), Loader=_SafeUniqueLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None  # `unlearn validate` reports it, with the line
    return data if isinstance(data, dict) else None


def pr_check(root: Path, base: str, head: str) -> list[str]:
    """The submission YAMLs to evaluate, or a HarnessError naming the first refused path."""
    root = Path(root)
    changes = changed_paths(root, base, head)
    modes = tree(root, head)
    for status, path in changes:
        if not path.startswith(ALLOWED_PREFIX):
            raise HarnessError(f"{path}: a submission pull request may change only submissions/ (this one {'deletes' if status == 'D' else 'changes'} it)")
        mode = modes.get(path)
        if mode == "120000":
            raise HarnessError(f"{path}: is a symbolic link (refused: it could point outside the repository)")
        if mode == "160000":
            raise HarnessError(f"{path}: is a git submodule (refused)")
    for path in modes:
        why = forbidden_tracked(path)
        if why:
            raise HarnessError(f"{path}: tracked in the pull request, but {why}")
    subs = sorted(p for p, m in modes.items() if PurePosixPath(p).parent == PurePosixPath("submissions") and p.endswith((".yaml", ".yml")))
    names: dict[str, str] = {}
    docs: dict[str, dict] = {}
    for p in subs:
        d = _submission_of(root, head, p)
        if d is None:
            continue
        docs[p] = d
        n = d.get("name")
        if isinstance(n, str):
            if n in names:
                raise HarnessError(f"{p}: name: {n!r} is also the name of {names[n]} (one results file per name)")
            names[n] = p
    changed = {p for _, p in changes}

    def touched(ref: str) -> bool:  # a changed file is the ref, inside it, or beside it
        ref = ref.strip("/")
        parent = str(PurePosixPath(ref).parent)
        return bool(ref) and any(c == ref or c.startswith(ref + "/") or c.startswith(parent + "/") for c in changed)

    todo = []
    for p in subs:
        d = docs.get(p) or {}
        ck = d.get("checkpoint") if isinstance(d.get("checkpoint"), dict) else {}
        refs = [str(ck.get("path") or ""), str(d.get("method_record") or "")]
        if p in changed or any(touched(r) for r in refs if r.startswith(ALLOWED_PREFIX + "checkpoints/")):
            todo.append(p)
    return todo
