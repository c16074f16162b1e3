"""What a suite or submission names, and its pins: every file by its place in the YAML
(``Item``), the lock files ``unlearn pin`` writes, and the pins a run records.

Lock files: ``unlearn pin SUITE`` writes ``suites/locks/<id>.lock.yaml``: for every file the suite
names (by its place in the suite, e.g. ``scorer.style_weights``), its source (hub repo @
revision : file, URL or repository path) and sha256. ``spec.load_suite`` puts those sha256
values in place of the suite's all-zero placeholders (a lock whose source no longer matches the
suite, or that contradicts a real sha256 in the suite, is refused), so a run needs no edit of the
suite, and the PR that pins a suite shows exactly the hashes it adds. A result of a real suite
stands on the leaderboard only with the pins of this checkout (``results.attest.pins_problem``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.store.fetch import PLACEHOLDER
from harness.store.hub import hub_source
from harness.spec.yamlio import read_yaml


# ----------------------------------------------------------------------------- what a spec names
@dataclass(frozen=True)
class Item:
    """One file or folder a suite / submission names. ``key``: its place in the YAML (the lock's
    key); ``kind``: hub-file, hub-folder, hub-model (a transformers model by revision),
    hub-pipeline, url, path; ``sha256``: the pin (placeholder if not pinned yet)."""

    key: str
    kind: str
    source: str
    sha256: str | None = None
    repo: str | None = None
    revision: str | None = None
    filename: str | None = None
    subfolder: str | None = None
    repo_type: str = "model"
    url: str | None = None
    path: str | None = None

    @property
    def pinned(self) -> bool:
        return bool(self.sha256) and self.sha256 != PLACEHOLDER


def _item(key: str, node: dict) -> Item | None:
    sha = node.get("sha256")
    h = node.get("hub")
    if isinstance(h, dict) and h.get("repo") and h.get("revision"):
        kind = "hub-file" if h.get("filename") else "hub-folder"
        return Item(key, kind, hub_source(h), sha, h["repo"], h["revision"], h.get("filename"), h.get("subfolder"), h.get("repo_type", "model"))
    if isinstance(node.get("url"), str) and sha:
        return Item(key, "url", node["url"], sha, url=node["url"])
    if isinstance(node.get("path"), str) and sha:
        return Item(key, "path", f"path:{node['path']}", sha, path=node["path"])
    if isinstance(node.get("model"), str) and isinstance(node.get("revision"), str) and re.fullmatch(r"[0-9a-f]{40}", node["revision"]):
        return Item(key, "hub-model", f"hub:{node['model']}@{node['revision']}", None, node["model"], node["revision"])
    return None


def items_of(data, key: str = "") -> list[Item]:
    """Every file the (raw, include-merged) YAML data names, found by shape: ``{hub: {repo,
    revision, filename | subfolder}, sha256}``, ``{url, sha256}``, ``{path, sha256}``, or
    metric params ``{model: hub id, revision: commit}``. List items are named by their ``name``."""
    out: list[Item] = []
    if isinstance(data, dict):
        it = _item(key, data)
        if it is not None:
            out.append(it)
            if it.kind != "hub-model":
                return out
        for k, v in data.items():
            if k in ("hub",):
                continue
            out += items_of(v, f"{key}.{_esc(k)}" if key else _esc(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            name = v.get("name") if isinstance(v, dict) and isinstance(v.get("name"), str) else str(i)
            out += items_of(v, f"{key}.{_esc(name)}" if key else _esc(name))
    return out


def _esc(part) -> str:
    """One component of a key: a ``.`` (a concept ``st. ives``) or ``%`` in it escaped, so a
    key splits back into the components it was made of."""
    return str(part).replace("%", "%25").replace(".", "%2E")


def companions(data: dict) -> list[Item]:
    """Files a loader reads beside a pinned one: the toy classifier's ``config.json`` next to its
    hub weights (same commit, verified against the hub's git blob sha1)."""
    sc = data.get("scorer") if isinstance(data, dict) else None
    w = sc.get("weights") if isinstance(sc, dict) and sc.get("backend") == "toy" else None
    h = w.get("hub") if isinstance(w, dict) else None
    if not isinstance(h, dict) or not h.get("filename"):
        return []
    f = str(Path(h["filename"]).parent / "config.json").removeprefix("./")
    return [Item("scorer.weights(config)", "hub-file", hub_source({**h, "filename": f}), None, h["repo"], h["revision"], f, repo_type=h.get("repo_type", "model"))]


def submission_items(sub) -> list[Item]:
    out = []
    b = sub.base_model
    if b.hub_id:
        out.append(Item("base_model", "hub-pipeline", f"hub:{b.hub_id}@{b.revision}", None, b.hub_id, b.revision))
    c = sub.checkpoint
    if c is not None and c.url:
        out.append(Item("checkpoint", "url", c.url, c.sha256, url=c.url))
    return out


# ----------------------------------------------------------------------------- lock files
def lock_path(suite_path: Path) -> Path:
    """``suites/locks/<id>.lock.yaml``: beside the suites, outside the ``suites/*.yaml`` glob."""
    return Path(suite_path).parent / "locks" / (Path(suite_path).stem + ".lock.yaml")


def read_lock(suite_path: Path) -> dict[str, dict]:
    p = lock_path(suite_path)
    if not p.is_file():
        return {}

    data = read_yaml(p)
    pins = data.get("pins")
    if not isinstance(pins, dict) or not all(isinstance(v, dict) and re.fullmatch(r"[0-9a-f]{64}", str(v.get("sha256", ""))) and isinstance(v.get("source"), str) for v in pins.values()):
        raise HarnessError(f"{p}: pins: expected a mapping of key -> {{source, sha256}} (re-make it with unlearn pin)")
    return pins


def apply_lock(suite_path: Path, data: dict) -> dict:
    """The suite's raw data with the lock's sha256 values in place of its placeholders."""
    pins = read_lock(suite_path)
    if not pins:
        return data
    lp = lock_path(suite_path)
    found = {it.key: it for it in items_of(data)}
    for key, pin in pins.items():
        it = found.get(key)
        if it is None:
            raise HarnessError(f"{lp}: pins.{key}: the suite names no such file any more; re-run unlearn pin {Path(suite_path).stem}")
        if it.source != pin["source"]:
            raise HarnessError(f"{lp}: pins.{key}: pinned for {pin['source']}, the suite now names {it.source}; re-run unlearn pin {Path(suite_path).stem}")
        if it.kind == "hub-model":
            continue  # a commit pins it; the lock's sha256 is checked by unlearn fetch
        if it.pinned and it.sha256 != pin["sha256"]:
            raise HarnessError(f"{lp}: pins.{key}: sha256 {pin['sha256']} contradicts the suite's {it.sha256}")
        _set(data, key, pin["sha256"])
    return data


def _set(data, key: str, sha: str) -> None:
    node = _node(data, key)
    node["sha256"] = sha


def _node(data, key: str):
    node = data
    for part in _split(key):
        if isinstance(node, list):
            node = next((v for v in node if isinstance(v, dict) and v.get("name") == part), None) if not part.isdigit() else node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            node = None
        if node is None:
            raise HarnessError(f"pins.{key}: names no place in the suite")
    return node


def _split(key: str) -> list[str]:
    return [p.replace("%2E", ".").replace("%25", "%") for p in key.split(".")]


def suite_pins(suite) -> dict[str, str]:
    """key -> sha256 of every pinned file a loaded suite names (hub models: their commit): what a
    run records and what the leaderboard compares."""
    data = suite.model_dump(mode="json", exclude_none=True)
    out: dict[str, Any] = {}
    for it in items_of(data):
        out[it.key] = it.revision if it.kind == "hub-model" else f"{it.source}#{it.sha256}"
    return dict(sorted(out.items()))
