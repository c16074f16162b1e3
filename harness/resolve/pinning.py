"""``unlearn fetch`` and ``unlearn pin``: every file a suite, a submission, a hub reference or
a URL names, found in the caches or downloaded (hub files by ``harness/store/hub.py``, URLs by
``harness/store/fetch.py``) and verified; ``pin`` writes the suite's lock file (``harness/spec/pins.py``).
Files already complete are not downloaded again, so an interrupted fetch continues where it
stopped.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from harness.errors import HarnessError
from harness.store.fetch import check_url, fetch, offline
from harness.store.hashing import sha256_file, sha256_tree
from harness.store.hub import hub_file, hub_snapshot, model_snapshot, pipeline_snapshot, repo_file_names
from harness.spec.pins import Item, apply_lock, companions, items_of, lock_path, submission_items


def _raw_suite(path: Path, validate: bool = False, lock: bool = True) -> dict:
    """A suite's include-merged data (with its lock's pins unless ``lock=False``); ``validate``:
    refused with the loader's one-line errors if it is not a valid suite."""
    from pydantic import ValidationError

    from harness.spec import SpecErrors, Suite, _format_validation, _with_includes, read_yaml

    data = _with_includes(path, read_yaml(path))
    data = apply_lock(path, data) if lock else data
    if validate:
        import copy

        try:
            Suite.model_validate(copy.deepcopy(data))
        except ValidationError as e:
            raise SpecErrors(_format_validation(Path(path), e)) from None
    return data


def _suite_file(arg: str, root: Path) -> Path | None:
    p = Path(arg)
    if p.suffix in (".yaml", ".yml"):
        return p if p.is_file() else None
    cand = root / "suites" / f"{arg}.yaml"
    return cand if cand.is_file() else None


def _suite_items(path: Path, sid: str) -> list[Item]:
    """Every file a suite names (and the files loaded beside them), keyed ``<suite id>:<place>``."""
    data = _raw_suite(path)
    return [replace(it, key=f"{sid}:{it.key}") for it in items_of(data) + companions(data)]


def targets(arg: str, root: Path) -> tuple[str, list[Item]]:
    """What ``unlearn fetch ARG`` gets: a suite (id or file), a submission file (its base model,
    its checkpoint URL and its suites' files), ``hub:REPO@COMMIT[:FILE]`` or an https URL."""
    from harness.spec import is_suite_file, load_submission, read_yaml

    m = re.fullmatch(r"hub:(?:(datasets)/)?(\w[\w.-]*/\w[\w.-]*)@([0-9a-f]{40})(?::(\w[\w.-]*(?:/\w[\w.-]*)*/?)?)?", arg)
    if m:
        rtype = "dataset" if m.group(1) else "model"
        f = m.group(4)
        if f and not f.endswith("/"):
            return arg, [Item(arg, "hub-file", arg, None, m.group(2), m.group(3), f, repo_type=rtype)]
        if f:
            return arg, [Item(arg, "hub-folder", arg, None, m.group(2), m.group(3), subfolder=f.rstrip("/"), repo_type=rtype)]
        kind = "hub-repo" if rtype == "model" else "hub-folder"  # hub-repo: a pipeline or a transformers model, by its files
        return arg, [Item(arg, kind, arg, None, m.group(2), m.group(3), repo_type=rtype)]
    if arg.startswith(("https://", "http://")):
        check_url(arg, "unlearn fetch")
        return arg, [Item(arg, "url", arg, None, url=arg)]
    p = _suite_file(arg, root)
    if p is None:
        raise HarnessError(f"unlearn fetch: {arg!r} is not a suite id, a suite or submission file, hub:REPO@COMMIT[:FILE] or an https URL")
    data = read_yaml(p)
    if is_suite_file(data):
        _raw_suite(p, validate=True)
        return str(p), _suite_items(p, p.stem)
    from harness.run.plan import resolve_suites, suite_path

    sub = load_submission(p)
    out = submission_items(sub)
    for sid in resolve_suites(sub, root):
        sp = suite_path(root, sid)
        out += _suite_items(sp, sid)
    return str(p), out


def get(item: Item, root: Path, cache_dir: Path, progress: bool = False, download: bool = True) -> tuple[Path | None, str | None]:
    """Fetch (or find) one item: (local path, its sha256 or for a folder its folder sha256)."""
    what = item.key
    want = item.sha256 if item.pinned else None
    if item.kind == "hub-file":
        p = hub_file(item.repo, item.revision, item.filename, repo_type=item.repo_type, sha256=want, what=what, download=download, progress=progress)
        return p, sha256_file(p)
    if item.kind == "hub-folder":
        sub = (item.subfolder or "").strip("/")
        snap = hub_snapshot(item.repo, item.revision, repo_type=item.repo_type, allow=[f"{sub}/*"] if sub else None, what=what,
                            download=download, progress=progress, required=[sub] if sub else [])
        p = snap / sub if sub else snap
        got = sha256_tree(p)
    elif item.kind == "hub-model":
        p = model_snapshot(item.repo, item.revision, what=what, download=download)
        got = sha256_tree(p)
    elif item.kind == "hub-repo":  # by its files: a diffusers pipeline (model_index.json) or a transformers model
        try:
            p = pipeline_snapshot(item.repo, item.revision, what=what, download=False)
        except HarnessError:
            if not download or offline():
                raise
            names = repo_file_names(item.repo, item.revision, item.repo_type, item.key)
            p = (pipeline_snapshot(item.repo, item.revision, what=what, progress=progress) if "model_index.json" in names
                 else model_snapshot(item.repo, item.revision, what=what))
        got = sha256_tree(p)
    elif item.kind == "hub-pipeline":
        p = pipeline_snapshot(item.repo, item.revision, what=what, download=download, progress=progress)
        got = sha256_tree(p)
    elif item.kind == "url":
        p = fetch(item.url, want, cache_dir, what, progress=progress) if download else None
        return p, (sha256_file(p) if p else None)
    else:  # a file in the repository: nothing to download
        from harness.spec import inside

        p = inside(root, item.path, f"{what}.path")
        if not p.exists():
            return None, None
        got = sha256_tree(p) if p.is_dir() else sha256_file(p)
    if want and got != want:
        raise HarnessError(f"{what}.sha256: {item.source} has sha256 {got}, expected {want}")
    return p, got


def fetch_all(arg: str, root: Path, cache_dir: Path, progress: bool = True) -> list[str]:
    """``unlearn fetch``: every file ARG names, downloaded (or found in the caches) and verified;
    one line per file. Files already complete are not downloaded again, so an interrupted fetch
    continues where it stopped."""
    if offline():
        raise HarnessError("unlearn fetch: this run is offline (HF_HUB_OFFLINE / UNLEARN_OFFLINE); unset it where the hub is reachable")
    _, items = targets(arg, root)
    lines = []
    for it in items:
        p, sha = get(it, root, cache_dir, progress=progress)
        if p is None:
            lines.append(f"{it.key}: {it.source}: missing (a repository file: make or convert it, then `unlearn pin`)")
        else:
            state = "pinned" if it.pinned or it.kind in ("hub-model", "hub-pipeline", "hub-repo") else "not pinned yet: unlearn pin"
            lines.append(f"{it.key}: {it.source} -> {p} (sha256 {sha}, {state})")
    return lines


def pin_suite(arg: str, root: Path, cache_dir: Path, progress: bool = False) -> tuple[Path, dict]:
    """``unlearn pin SUITE``: the sha256 of every file the suite names, each fetched (or found)
    and verified, written to ``suites/locks/<id>.lock.yaml``. A pin already in the suite must
    hold (a contradicting file is refused); placeholders get the file's own sha256."""
    import yaml

    from harness.store.fsutil import atomic_write
    from harness.spec import load_suite

    p = _suite_file(arg, root)
    if p is None:
        raise HarnessError(f"unlearn pin: no suite {arg!r} (an id in suites/ or a suite file)")
    raw = _raw_suite(p, validate=True, lock=False)  # the suite's own pins, not the old lock's
    pins = {}
    for it in items_of(raw):
        local, sha = get(it, root, cache_dir, progress=progress, download=not offline())
        if local is None:
            raise HarnessError(f"{p}: {it.key}: {it.path} does not exist; make it (see the suite's comments) before pinning")
        if it.pinned and sha != it.sha256:
            raise HarnessError(f"{p}: {it.key}: {it.source} has sha256 {sha}, the suite pins {it.sha256}")
        pins[it.key] = {"source": it.source, "sha256": sha}
    lp = lock_path(p)
    body = {"suite": p.stem, "pins": pins}
    text = ("# Written by `unlearn pin " + p.stem + "`: the sha256 of every file the suite names (source = hub repo@commit:file,\n"
            "# URL or repository path). spec.load_suite fills the suite's all-zero placeholders from it. Do not edit by hand.\n")
    atomic_write(lp, (text + yaml.safe_dump(body, sort_keys=True, allow_unicode=True)).encode())
    load_suite(p)  # the suite with its new lock still loads
    return lp, pins


