"""``unlearn pr-check --base SHA --head SHA``: what a submission pull request may change, checked
from git itself before anything of the PR is read or run (docs/security.md).

A submission PR may add or change files under ``submissions/`` only (its YAML and its toy
checkpoint folder, ``submissions/checkpoints/<name>/``). Refused, one line each naming the path
(exit 2): a change anywhere else (harness, suites, thresholds, baselines, workflows, tests); a
tracked image cache, results or regression folder anywhere in the tree (``.unlearn-cache/``,
``results/``, ``.regression*``); a symbolic link or submodule among the changed paths; two
submission files whose names read as one (``attest.name_key``: case, punctuation, look-alike
letters; set members included wherever they sit; entries of the base branch included); two
paths that differ only in case; an entry of the fork point that no file gives any more (a
removal is a maintainer's change). Renames are seen as a deletion plus an addition
(``--no-renames``), so a renamed and edited submission is listed like a new one: nothing is
filtered by change type. Prints the submission YAMLs to evaluate, one per line: those added or
changed, and those whose checkpoint folder or method record changed.
"""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path, PurePosixPath

import yaml

from harness.errors import HarnessError

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
        from harness.spec import _SafeUniqueLoader

        data = yaml.load(text.decode("utf-8"), Loader=_SafeUniqueLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None  # `unlearn validate` reports it, with the line
    return data if isinstance(data, dict) else None


def _is_yaml(path: str) -> bool:
    return path.endswith((".yaml", ".yml"))


def entries(root: Path, rev: str, modes: dict[str, str]) -> dict[str, dict]:
    """path -> document of every submission file of ``rev``: the YAMLs directly in
    ``submissions/`` that are not sets, and every member a set there lists (a member may sit
    deeper, e.g. under ``submissions/checkpoints/``: it is evaluated, so it is an entry)."""
    from harness.spec.bundle import is_set

    out: dict[str, dict] = {}
    top = sorted(p for p, m in modes.items() if PurePosixPath(p).parent == PurePosixPath("submissions") and _is_yaml(p))
    members: list[str] = []
    for p in top:
        d = _submission_of(root, rev, p)
        if d is None:
            out[p] = {}
        elif is_set(d):
            ms = d.get("submissions")
            members += [posixpath.normpath(m) for m in ms if isinstance(m, str) and m] if isinstance(ms, list) else []  # a/../b is b
        else:
            out[p] = d
    for m in members:
        if m in out or m not in modes or not m.startswith(ALLOWED_PREFIX):
            continue  # a member outside submissions/ or missing: `unlearn validate` refuses the set
        d = _submission_of(root, rev, m)
        out[m] = {} if d is None or is_set(d) else d
    return out


def refuse_case_collisions(modes: dict[str, str], changed: set[str]) -> None:
    """Two paths (files or folders) of the tree that differ only in case, one of them changed:
    on a case-insensitive file system one would overwrite the other."""
    seen: dict[str, str] = {}
    hit: list[tuple[str, str]] = []
    for path in sorted(modes):
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            k = p.casefold()
            if k in seen and seen[k] != p:
                hit.append((seen[k], p))
            seen.setdefault(k, p)
    touches = lambda x: any(c == x or c.startswith(x + "/") for c in changed)
    for a, b in hit:
        if touches(a) or touches(b):
            new, old = (a, b) if touches(a) and not touches(b) else (b, a)
            raise HarnessError(f"{new}: differs from {old} only in case (refused: on a case-insensitive file system one overwrites the other)")


def refuse_lookalike_names(docs: dict[str, dict], changed: set[str]) -> None:
    """The one name rule (``attest.name_key``, as the site folds names): two submission files of
    the PR's tree whose names read as one (equal, or equal but for case, punctuation and
    look-alike letters), one of them changed by the PR."""
    from harness.results.attest import name_key

    seen: dict[str, tuple[str, str]] = {}
    for p in sorted(docs, key=lambda p: (p in changed, p)):  # unchanged (existing) entries first
        if not isinstance(docs[p], dict):
            continue
        n = docs[p].get("name")
        if not isinstance(n, str):
            continue
        k = name_key(n)
        if k in seen and (p in changed or seen[k][0] in changed):
            q, m = seen[k]
            if m == n:
                raise HarnessError(f"{p}: name: {n!r} is also the name of {q} (one results file per name)")
            raise HarnessError(f"{p}: name: {n!r} reads as {m!r} of {q} (names are compared folded: case, punctuation, look-alike letters)")
        seen.setdefault(k, (p, n))


def refuse_removed_entries(before: dict[str, dict], after: dict[str, dict]) -> None:
    """An entry of the base branch whose name no submission file of the PR gives any more: a
    pull request may add and change entries, never take one off the board (a maintainer does).
    A renamed file that keeps its name is not a removal."""
    names = {d.get("name") for d in after.values()}
    for p, d in sorted(before.items()):
        n = d.get("name")
        if isinstance(n, str) and n not in names:
            raise HarnessError(f"{p}: the pull request removes the entry {n!r} (deleted or renamed away; only a maintainer removes an entry)")


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
    changed = {p for _, p in changes}
    refuse_case_collisions(modes, changed)
    docs = entries(root, head, modes)
    subs = sorted(docs)
    fork = _git(root, "merge-base", base, head).decode().strip()
    before = entries(root, fork, tree(root, fork))
    refuse_removed_entries(before, docs)  # what the PR itself took away
    existing = entries(root, base, tree(root, base))  # the board now, newer entries of the base included
    deleted = {p for st, p in changes if st == "D"}
    refuse_lookalike_names({**{f"{p} (base branch)": d for p, d in existing.items() if p not in docs and p not in deleted}, **docs}, changed)

    def touched(ref: str) -> bool:  # a changed file is the ref, inside it, or beside it
        ref = ref.strip("/")
        parent = str(PurePosixPath(ref).parent)
        return bool(ref) and any(c == ref or c.startswith(ref + "/") or c.startswith(parent + "/") for c in changed)

    todo = []
    for p in subs:
        d = docs[p]
        ck = d.get("checkpoint")
        ck = ck if isinstance(ck, dict) else {}
        refs = [str(ck.get("path") or ""), str(d.get("method_record") or "")]
        if p in changed or p not in before or any(touched(r) for r in refs if r.startswith(ALLOWED_PREFIX + "checkpoints/")):  # new: a set now lists it
            todo.append(p)
    return todo
