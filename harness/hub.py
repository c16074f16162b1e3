"""Real models: files a suite or submission names on the Hugging Face Hub or at an https URL,
fetched into the caches a run reads, verified, and pinned.

Where files live:
- hub files (base pipelines, scorer weights, CLIP models, reference folders) go into
  huggingface_hub's own cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``), through ``hf_hub_download`` / ``snapshot_download`` with the
  pinned ``revision``; so a cluster's shared cache serves the harness as it serves diffusers;
- URL files (prompt CSVs, checkpoints) go to ``<harness cache>/downloads/<sha256>/<name>``, where
  the run looks for them (``harness/fetch.py``).

Verification: every hub file is compared with the hub's own metadata (an LFS file's sha256 is its
ETag / ``X-Linked-Etag``; a small git file's ETag is its git blob sha1) and, where the suite or
its lock pins one, with that sha256. A file that does not match is deleted from the cache and
refused with one line. Downloads have a timeout (``UNLEARN_DOWNLOAD_TIMEOUT`` seconds, default
60) and a size cap (``UNLEARN_MAX_DOWNLOAD_BYTES``, default 64 GiB for one file or snapshot),
and only https URLs are fetched: plain http is accepted for 127.0.0.1 / localhost only when
``UNLEARN_TEST_ALLOW_LOOPBACK_HTTP=1`` (the tests' stand-in hub), never otherwise.

Offline (``HF_HUB_OFFLINE=1`` or ``UNLEARN_OFFLINE=1``) nothing is downloaded; a missing file is
one line naming it and the ``unlearn fetch`` command that would get it.

Lock files: ``unlearn pin SUITE`` writes ``suites/locks/<id>.lock.yaml``: for every file the suite
names (by its place in the suite, e.g. ``scorer.style_weights``), its source (hub repo @
revision : file, URL or repository path) and sha256. ``spec.load_suite`` puts those sha256
values in place of the suite's all-zero placeholders (a lock whose source no longer matches the
suite, or that contradicts a real sha256 in the suite, is refused), so a run needs no edit of the
suite, and the PR that pins a suite shows exactly the hashes it adds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import HarnessError
from .hashing import sha256_file, sha256_tree

PLACEHOLDER = "0" * 64
LOOPBACK_ENV = "UNLEARN_TEST_ALLOW_LOOPBACK_HTTP"
# what a diffusers Stable Diffusion pipeline needs from a hub repository (no safety checker,
# no fp16 / EMA / non-EMA variants, no single-file .ckpt copies)
PIPELINE_ALLOW = ["*.json", "*.txt", "tokenizer/*", "*/*.safetensors"]
PIPELINE_IGNORE = ["safety_checker/*", "*.fp16.*", "*non_ema*", "*.ema.*", "*.ckpt", "*.bin", "*.msgpack", "*.onnx*"]
TRANSFORMERS_ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors"]
TRANSFORMERS_IGNORE = ["*.bin", "*.msgpack", "*.h5", "*.ot", "*.onnx*", "*/*"]


def timeout_s() -> float:
    return float(os.environ.get("UNLEARN_DOWNLOAD_TIMEOUT", "60"))


def max_bytes() -> int:
    return int(os.environ.get("UNLEARN_MAX_DOWNLOAD_BYTES", str(64 * 2**30)))


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "UNLEARN_OFFLINE"))


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def check_url(url: str, what: str) -> str:
    """https only; plain http to 127.0.0.1 / localhost only under the tests' explicit allowance."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https" and u.hostname:
        return url
    if u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost") and os.environ.get(LOOPBACK_ENV) == "1":
        return url
    raise HarnessError(f"{what}: {url!r} is not an https URL")


def endpoint() -> str:
    ep = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return check_url(ep, "HF_ENDPOINT")


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


def hub_source(h: dict) -> str:
    tail = h.get("filename") or ((h.get("subfolder") or "").rstrip("/") + "/")
    kind = "" if h.get("repo_type", "model") == "model" else f"{h['repo_type']}s/"
    return f"hub:{kind}{h['repo']}@{h['revision']}:{tail}"


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
            out += items_of(v, f"{key}.{k}" if key else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            name = v.get("name") if isinstance(v, dict) and isinstance(v.get("name"), str) else str(i)
            out += items_of(v, f"{key}.{name}" if key else name)
    return out


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
    if c.url:
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
    from .spec import read_yaml

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
        else:
            node = node[part]
    return node


def _split(key: str) -> list[str]:
    return key.split(".")


def suite_pins(suite) -> dict[str, str]:
    """key -> sha256 of every pinned file a loaded suite names (hub models: their commit): what a
    run records and what the leaderboard compares."""
    data = suite.model_dump(mode="json", exclude_none=True)
    out = {}
    for it in items_of(data):
        out[it.key] = it.revision if it.kind == "hub-model" else f"{it.source}#{it.sha256}"
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- hub files
def _hint(hint: str | None, item_source: str) -> str:
    return hint or f"unlearn fetch {item_source}"


def _missing(what: str, name: str, hint: str | None, source: str) -> HarnessError:
    why = "this run is offline" if offline() else "it could not be fetched"
    return HarnessError(f"{what}: {name} is not in the Hugging Face cache ({hub_cache()}) and {why}; get it with: {_hint(hint, source)}")


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_blob(path: Path, what: str, name: str) -> str:
    """Compare a cached hub file with the hub's own identity of it: its blob is named by its ETag,
    the sha256 for LFS files, the git blob sha1 for the others. Returns the file's sha256; a
    mismatch deletes the blob and its pointer and raises."""
    blob = Path(os.path.realpath(path))
    etag = blob.name
    sha = sha256_file(blob)
    ok = sha == etag if re.fullmatch(r"[0-9a-f]{64}", etag) else (_git_blob_sha1(blob) == etag if re.fullmatch(r"[0-9a-f]{40}", etag) else True)
    if not ok:
        blob.unlink(missing_ok=True)
        Path(path).unlink(missing_ok=True)
        raise HarnessError(f"{what}: {name}: the download has sha256 {sha}, the hub's metadata says {etag}; refused and removed from the cache")
    return sha


def _hf_kwargs() -> dict:
    return {"cache_dir": str(hub_cache()), "endpoint": endpoint()}


def _allow_network():
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; follow the environment now."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = offline()
    if "HF_HUB_DOWNLOAD_TIMEOUT" not in os.environ:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = int(timeout_s())
    if "HF_HUB_ETAG_TIMEOUT" not in os.environ:
        constants.HF_HUB_ETAG_TIMEOUT = int(timeout_s())


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no detail"


def _cap(size: int | None, what: str, name: str) -> None:
    if size is not None and size > max_bytes():
        raise HarnessError(f"{what}: {name} is {size} bytes, over the download cap of {max_bytes()} (UNLEARN_MAX_DOWNLOAD_BYTES)")


def hub_file(repo: str, revision: str, filename: str, *, repo_type: str = "model", sha256: str | None = None,
             what: str = "hub file", hint: str | None = None, download: bool = True, progress: bool = False) -> Path:
    """A file of a hub repository at a commit: from the cache, else (online, ``download``)
    downloaded and verified; its sha256 compared with ``sha256`` where that is a real pin."""
    from huggingface_hub import try_to_load_from_cache

    name = f"{repo}@{revision[:12]}:{filename}"
    source = hub_source({"repo": repo, "revision": revision, "filename": filename, "repo_type": repo_type})
    got = try_to_load_from_cache(repo, filename, cache_dir=str(hub_cache()), revision=revision, repo_type=repo_type)
    if not isinstance(got, str):
        if offline() or not download:
            raise _missing(what, name, hint, source)
        _allow_network()
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

        try:
            meta = get_hf_file_metadata(hf_hub_url(repo, filename, repo_type=repo_type, revision=revision, endpoint=endpoint()), timeout=timeout_s())
            _cap(meta.size, what, name)
            _bars(progress)
            got = hf_hub_download(repo, filename, revision=revision, repo_type=repo_type, etag_timeout=timeout_s(), **_hf_kwargs())
        except HarnessError:
            raise
        except Exception as e:  # noqa: BLE001 (huggingface_hub and httpx raise many types; each becomes one line)
            raise HarnessError(f"{what}: could not download {name}: {type(e).__name__}: {_first_line(e)}") from None
    sha = verify_blob(Path(got), what, name)
    if sha256 and sha256 != PLACEHOLDER and sha != sha256:
        raise HarnessError(f"{what}.sha256: {name} has sha256 {sha}, expected {sha256}")
    return Path(got)


def _tree(repo: str, revision: str, repo_type: str) -> list:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    return [f for f in HfApi(endpoint=endpoint()).list_repo_tree(repo, recursive=True, revision=revision, repo_type=repo_type) if isinstance(f, RepoFile)]


def _matches(path: str, allow: list[str] | None, ignore: list[str] | None) -> bool:
    if allow and not any(fnmatch.fnmatch(path, p) for p in allow):
        return False
    return not (ignore and any(fnmatch.fnmatch(path, p) for p in ignore))


def hub_snapshot(repo: str, revision: str, *, repo_type: str = "model", allow: list[str] | None = None, ignore: list[str] | None = None,
                 what: str = "hub repository", hint: str | None = None, download: bool = True, progress: bool = False,
                 required: list[str] = (), refresh: bool = False) -> Path:
    """The snapshot folder of a repository at a commit (only the files ``allow`` / ``ignore``
    select): from the cache, else downloaded, every file verified against the hub's tree
    listing (LFS sha256 or git blob sha1). ``required``: files that must be there (offline,
    a missing one is named)."""
    name = f"{repo}@{revision[:12]}"
    source = hub_source({"repo": repo, "revision": revision, "subfolder": "", "repo_type": repo_type}).rstrip(":/")
    snap = hub_cache() / f"{repo_type}s--{repo.replace('/', '--')}" / "snapshots" / revision
    need_download = refresh or not snap.is_dir() or any(not (snap / r).exists() for r in required)
    if need_download:
        if offline() or not download:
            first = next((r for r in required if not (snap / r).exists()), "") if snap.is_dir() else ""
            raise _missing(what, f"{name}:{first}" if first else name, hint, source)
        _allow_network()
        from huggingface_hub import snapshot_download

        try:
            files = [f for f in _tree(repo, revision, repo_type) if _matches(f.path, allow, ignore)]
            _cap(sum(f.size for f in files), what, name)
            _bars(progress)
            path = snapshot_download(repo, revision=revision, repo_type=repo_type, allow_patterns=[f.path for f in files] or ["__none__"],
                                     etag_timeout=timeout_s(), **_hf_kwargs())
        except HarnessError:
            raise
        except Exception as e:  # noqa: BLE001 (huggingface_hub and httpx raise many types; each becomes one line)
            raise HarnessError(f"{what}: could not download {name}: {type(e).__name__}: {_first_line(e)}") from None
        snap = Path(path)
        for f in files:
            p = snap / f.path
            if not p.exists():
                raise HarnessError(f"{what}: {name}:{f.path} is missing after the download")
            expected = f.lfs.sha256 if f.lfs is not None else f.blob_id
            got = sha256_file(p) if f.lfs is not None else _git_blob_sha1(Path(os.path.realpath(p)))
            if got != expected:
                Path(os.path.realpath(p)).unlink(missing_ok=True)
                p.unlink(missing_ok=True)
                raise HarnessError(f"{what}: {name}:{f.path}: the download does not match the hub's metadata ({got} != {expected}); refused and removed from the cache")
    for r in required:
        if not (snap / r).exists():
            raise HarnessError(f"{what}: {name}:{r} is not in the repository")
    return snap


def _bars(progress: bool) -> None:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()


def pipeline_snapshot(repo: str, revision: str, what: str = "base_model", hint: str | None = None, download: bool = True, progress: bool = False) -> Path:
    """A Stable Diffusion pipeline from the hub at a commit, with every component's config and
    safetensors weights present (offline: the first missing file is named; online, a cached
    snapshot that lost a file gets it again)."""
    try:
        return _complete_pipeline(hub_snapshot(repo, revision, allow=PIPELINE_ALLOW, ignore=PIPELINE_IGNORE, what=what, hint=hint,
                                               download=download, progress=progress, required=["model_index.json"]), repo, revision, what, hint)
    except HarnessError:
        if offline() or not download:
            raise
    return _complete_pipeline(hub_snapshot(repo, revision, allow=PIPELINE_ALLOW, ignore=PIPELINE_IGNORE, what=what, hint=hint,
                                           progress=progress, required=["model_index.json"], refresh=True), repo, revision, what, hint)


def _complete_pipeline(snap: Path, repo: str, revision: str, what: str, hint: str | None) -> Path:
    import json

    index = json.loads((snap / "model_index.json").read_text())
    for comp, v in index.items():
        if comp.startswith("_") or comp in ("safety_checker", "feature_extractor", "image_encoder") or not isinstance(v, list) or v[0] is None:
            continue
        folder = snap / comp
        if comp in ("scheduler", "tokenizer"):
            if not folder.is_dir() or not any(folder.iterdir()):
                raise _missing(what, f"{repo}@{revision[:12]}:{comp}/", hint, f"hub:{repo}@{revision}")
            continue
        if not (folder / "config.json").is_file():
            raise _missing(what, f"{repo}@{revision[:12]}:{comp}/config.json", hint, f"hub:{repo}@{revision}")
        if not list(folder.glob("*.safetensors")):
            raise _missing(what, f"{repo}@{revision[:12]}:{comp}/*.safetensors", hint, f"hub:{repo}@{revision}")
    return snap


def model_snapshot(repo: str, revision: str, what: str = "model", hint: str | None = None, download: bool = True) -> Path:
    """A transformers model (CLIP) at a commit: configs, tokenizer files and safetensors weights."""
    return hub_snapshot(repo, revision, allow=TRANSFORMERS_ALLOW, ignore=TRANSFORMERS_IGNORE, what=what, hint=hint, download=download,
                        required=["config.json"])


# ----------------------------------------------------------------------------- URLs
def download_url(url: str, sha256: str | None, cache_dir: Path, what: str, progress: bool = False) -> Path:
    """An https file into ``<cache>/downloads/<sha256>/<name>`` (the run's layout), resumable:
    a partial ``.part`` file is continued with a Range request; timeout and size cap as above.
    ``sha256`` None / placeholder: the file is kept under the sha256 it has (``unlearn pin``)."""
    check_url(url, what)
    name = Path(urllib.parse.urlsplit(url).path).name or "download"
    pinned = bool(sha256) and sha256 != PLACEHOLDER
    seen = Path(cache_dir) / "downloads" / "by-url" / hashlib.sha256(url.encode()).hexdigest()
    if not pinned and seen.is_file():  # not pinned yet: the file this URL gave last time
        sha256 = seen.read_text().strip()
    if sha256 and sha256 != PLACEHOLDER:
        local = Path(cache_dir) / "downloads" / sha256 / name
        if local.is_file() and sha256_file(local) == sha256:
            return local
    if offline():
        raise HarnessError(f"{what}: {url} is not cached and this run is offline; get it with: unlearn fetch {url}")
    part_dir = Path(cache_dir) / "downloads" / "partial"
    part_dir.mkdir(parents=True, exist_ok=True)
    part = part_dir / (hashlib.sha256(url.encode()).hexdigest()[:24] + "-" + name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s()) as r:  # noqa: S310 (scheme checked above)
            if have and r.status != 206:
                have = 0  # the server ignored the range: start again
            total = r.headers.get("Content-Length")
            total = int(total) + have if total and total.isdigit() else None
            _cap(total, what, url)
            bar = _bar(progress, total, have, name)
            with open(part, "ab" if have else "wb") as f:
                n = have
                while chunk := r.read(1 << 16):
                    n += len(chunk)
                    if n > max_bytes():
                        raise HarnessError(f"{what}: {url} is over the download cap of {max_bytes()} bytes (UNLEARN_MAX_DOWNLOAD_BYTES)")
                    f.write(chunk)
                    bar.update(len(chunk))
            bar.close()
            if total is not None and part.stat().st_size != total:
                raise HarnessError(f"{what}: {url}: the download stopped at {part.stat().st_size} of {total} bytes; run the command again to resume")
    except (OSError, http.client.HTTPException) as e:
        raise HarnessError(f"{what}: could not download {url} ({type(e).__name__}: {e}); run the command again to resume") from None
    got = sha256_file(part)
    if pinned and got != sha256:
        part.unlink(missing_ok=True)
        raise HarnessError(f"{what}: {url} has sha256 {got}, expected {sha256}")
    local = Path(cache_dir) / "downloads" / got / name
    local.parent.mkdir(parents=True, exist_ok=True)
    part.replace(local)
    seen.parent.mkdir(parents=True, exist_ok=True)
    seen.write_text(got + "\n")
    return local


def _bar(progress: bool, total, initial, name):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, disable=not progress, leave=False)


# ----------------------------------------------------------------------------- one spec node
def pinned_path(root: Path, node, what: str, folder: bool = False, hint: str | None = None) -> Path:
    """The local file (or folder) behind a ``{path | hub, sha256}`` node of a suite, its sha256
    verified: a repository path, or a hub file / folder (from the cache; downloaded when online)."""
    from .spec import inside

    node = node.model_dump(exclude_none=True) if hasattr(node, "model_dump") else node
    if not isinstance(node, dict) or not node.get("sha256") or not (node.get("path") or node.get("hub")):
        raise HarnessError(f"{what}: needs {{path, sha256}} or {{hub: {{repo, revision, {'subfolder' if folder else 'filename'}}}, sha256}}")
    sha = node["sha256"]
    if node.get("hub"):
        h = node["hub"]
        if not isinstance(h, dict) or not h.get("repo") or not re.fullmatch(r"[0-9a-f]{40}", str(h.get("revision", ""))):
            raise HarnessError(f"{what}.hub: needs repo and a 40-character commit revision")
        if folder:
            sub = str(h.get("subfolder") or "").strip("/")
            snap = hub_snapshot(h["repo"], h["revision"], repo_type=h.get("repo_type", "model"), allow=[f"{sub}/*"] if sub else None,
                                what=what, hint=hint, required=[sub] if sub else [])
            p = snap / sub if sub else snap
            got = sha256_tree(p)
        else:
            p = hub_file(h["repo"], h["revision"], str(h.get("filename")), repo_type=h.get("repo_type", "model"), what=what, hint=hint)
            got = sha256_file(p)
        if got != sha:
            raise HarnessError(f"{what}.sha256: {hub_source(h)} has sha256 {got}, expected {sha}")
        return p
    p = inside(root, node["path"], f"{what}.path")
    if not p.exists():
        raise HarnessError(f"{what}.path: {node['path']}: no such {'folder' if folder else 'file'}")
    got = sha256_tree(p) if p.is_dir() else sha256_file(p)
    if got != sha:
        raise HarnessError(f"{what}.sha256: {node['path']} has sha256 {got}, expected {sha}")
    return p


# ----------------------------------------------------------------------------- unlearn fetch / pin
def _raw_suite(path: Path, validate: bool = False, lock: bool = True) -> dict:
    """A suite's include-merged data (with its lock's pins unless ``lock=False``); ``validate``:
    refused with the loader's one-line errors if it is not a valid suite."""
    from pydantic import ValidationError

    from .spec import SpecErrors, Suite, _format_validation, _with_includes, read_yaml

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


def targets(arg: str, root: Path) -> tuple[str, list[Item]]:
    """What ``unlearn fetch ARG`` gets: a suite (id or file), a submission file (its base model,
    its checkpoint URL and its suites' files), ``hub:REPO@COMMIT[:FILE]`` or an https URL."""
    from .spec import is_suite_file, load_submission, read_yaml

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
        return str(p), [Item(f"{p.stem}:{it.key}", it.kind, it.source, it.sha256, it.repo, it.revision, it.filename, it.subfolder, it.repo_type, it.url, it.path)
                        for it in items_of(_raw_suite(p)) + companions(_raw_suite(p))]
    from .evaluate import resolve_suites, suite_path

    sub = load_submission(p)
    out = submission_items(sub)
    for sid in resolve_suites(sub, root):
        sp = suite_path(root, sid)
        out += [Item(f"{sid}:{it.key}", it.kind, it.source, it.sha256, it.repo, it.revision, it.filename, it.subfolder, it.repo_type, it.url, it.path)
                for it in items_of(_raw_suite(sp)) + companions(_raw_suite(sp))]
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
            names = {f.path for f in _tree(item.repo, item.revision, item.repo_type)} if _tree_ok(item) else set()
            p = (pipeline_snapshot(item.repo, item.revision, what=what, progress=progress) if "model_index.json" in names
                 else model_snapshot(item.repo, item.revision, what=what))
        got = sha256_tree(p)
    elif item.kind == "hub-pipeline":
        p = pipeline_snapshot(item.repo, item.revision, what=what, download=download, progress=progress)
        got = sha256_tree(p)
    elif item.kind == "url":
        p = download_url(item.url, want, cache_dir, what, progress=progress) if download else None
        return p, (sha256_file(p) if p else None)
    else:  # a file in the repository: nothing to download
        from .spec import inside

        p = inside(root, item.path, f"{what}.path")
        if not p.exists():
            return None, None
        got = sha256_tree(p) if p.is_dir() else sha256_file(p)
    if want and got != want:
        raise HarnessError(f"{what}.sha256: {item.source} has sha256 {got}, expected {want}")
    return p, got


def _tree_ok(item: Item) -> bool:
    try:
        _allow_network()
        return bool(_tree(item.repo, item.revision, item.repo_type))
    except Exception as e:  # huggingface_hub / httpx raise several types for an unreachable hub
        raise HarnessError(f"{item.key}: could not list {item.repo}@{item.revision[:12]}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None


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

    from .fsutil import atomic_write
    from .spec import _with_includes, load_suite, read_yaml

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


def pins_problem(data: dict, root: Path) -> str | None:
    """Why a results file may not stand on the leaderboard as a real result: a suite of the real
    world whose recorded pins (``suites[].pins``) differ from the suite's pins in this checkout
    (suite file + lock). Toy suites, and suites this checkout does not have, are not judged here."""
    from .spec import load_suite

    for s in data.get("suites") or []:
        sid = s.get("id") if isinstance(s, dict) else None
        p = Path(root) / "suites" / f"{sid}.yaml"
        if not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", sid) or not p.is_file():
            continue
        try:
            suite = load_suite(p)
        except HarnessError:
            continue
        if suite.world != "real":
            continue
        want, got = suite_pins(suite), s.get("pins")
        if got != want:
            if not isinstance(got, dict):
                return f"suite {sid}: the run recorded no pins (a real suite needs them)"
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            return f"suite {sid}: pins differ from suites/{sid}.yaml + its lock at {diff[0]!r} ({len(diff)} in all)"
    return None
