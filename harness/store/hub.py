"""Real models on the Hugging Face Hub: files and snapshots at a pinned commit, from
huggingface_hub's own cache, downloaded when online, verified against the hub's metadata.

Where files live: hub files (base pipelines, scorer weights, CLIP models, reference folders) go
into huggingface_hub's cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) through ``hf_hub_download`` / ``snapshot_download`` with the
pinned ``revision``, so a cluster's shared cache serves the harness as it serves diffusers. URL
files (prompt CSVs, checkpoints) are ``harness/store/fetch.py``'s, which also holds the limits every
download keeps here: its timeout and size cap (one file, or a snapshot's total), https only.

Verification: every hub file is compared with the hub's own metadata (an LFS file's sha256 is its
ETag / ``X-Linked-Etag``; a small git file's ETag is its git blob sha1) and, where the suite or
its lock pins one, with that sha256. A file that does not match is deleted from the cache and
refused with one line. Offline (``HF_HUB_OFFLINE=1`` or ``UNLEARN_OFFLINE=1``) nothing is
downloaded; a missing file is one line naming it and the ``unlearn fetch`` command that would
get it. What a suite names and its lock files: ``harness/spec/pins.py``; the ``unlearn fetch`` /
``unlearn pin`` commands: ``harness/resolve/pinning.py``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path

from harness.errors import HarnessError
from harness.store.fetch import PLACEHOLDER, check_size, check_url, offline, timeout_s
from harness.store.hashing import sha256_file, sha256_tree
from harness.store.safefs import check_model_folder, inside

# what a diffusers Stable Diffusion pipeline needs from a hub repository (no safety checker,
# no fp16 / EMA / non-EMA variants, no single-file .ckpt / .safetensors copies at the root, no
# ONNX / OpenVINO / Flax exports): ``pipeline_allow`` narrows the allow list to the components
# model_index.json names; PIPELINE_ALLOW is what is asked when the index is not known yet.
PIPELINE_ALLOW = ["*.json", "*.txt", "tokenizer/*", "*/*.safetensors"]
PIPELINE_IGNORE = ["safety_checker/*", "*.fp16.*", "*non_ema*", "*.ema.*", "*.ckpt", "*.bin", "*.msgpack", "*.onnx*",
                   "*.*.safetensors", "*.safetensors.index.*.json",  # a variant: a second suffix before .safetensors (.fp16, .ema)
                   "*/*/*"]  # nothing below a component's own folder
PIPELINE_SKIP = ("safety_checker",)  # components a run never loads (passed as None)
TRANSFORMERS_ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors"]
TRANSFORMERS_IGNORE = ["*.bin", "*.msgpack", "*.h5", "*.ot", "*.onnx*", "*/*"]


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def endpoint() -> str:
    ep = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return check_url(ep, "HF_ENDPOINT")


def hub_source(h: dict) -> str:
    tail = h.get("filename") or ((h.get("subfolder") or "").rstrip("/") + "/")
    kind = "" if h.get("repo_type", "model") == "model" else f"{h['repo_type']}s/"
    return f"hub:{kind}{h['repo']}@{h['revision']}:{tail}"


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
    if not re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{40}", etag):  # not a sha256 or git blob sha1: nothing to verify it against
        raise HarnessError(f"{what}: {name}: the hub's ETag {etag[:80]!r} is not a sha256 or git blob sha1, so the file cannot be verified; refused")
    ok = sha == etag if len(etag) == 64 else _git_blob_sha1(blob) == etag
    if not ok:
        blob.unlink(missing_ok=True)
        Path(path).unlink(missing_ok=True)
        raise HarnessError(f"{what}: {name}: the download has sha256 {sha}, the hub's metadata says {etag}; refused and removed from the cache")
    return sha


def _hf_kwargs() -> dict:
    return {"cache_dir": str(hub_cache()), "endpoint": endpoint()}


class _Budget:
    """What the hub downloads of one call may still use: bytes under the cap (counted as they
    arrive, not from the listing), and time (the deadline and minimum average rate of
    ``fetch.pace``)."""

    def __init__(self, what: str, name: str):
        import time

        from harness.store.fetch import limits, pace

        self.what, self.name = what, name
        self.timeout, self.cap = limits()
        self.deadline_s, self.min_rate = pace()
        self.t0, self.used = time.monotonic(), 0

    def take(self, n: int) -> None:
        import time

        self.used += n
        elapsed = time.monotonic() - self.t0
        if self.used > self.cap:
            raise HarnessError(f"{self.what}: {self.name}: the hub sent more than the download cap of {self.cap} bytes (UNLEARN_DOWNLOAD_MAX_BYTES)")
        if elapsed > self.deadline_s:
            raise HarnessError(f"{self.what}: {self.name}: past the download deadline of {self.deadline_s:g} s (UNLEARN_DOWNLOAD_DEADLINE)")
        if elapsed > self.timeout and self.used < self.min_rate * elapsed:
            raise HarnessError(f"{self.what}: {self.name}: slower than the minimum rate of {self.min_rate:g} bytes/s (UNLEARN_DOWNLOAD_MIN_RATE)")


_BUDGET: list[_Budget] = []  # the budget of the download in progress (huggingface_hub calls from this thread)


def _guarded_client():
    """huggingface_hub's HTTP client with the downloader's rules (``fetch.check_url``): every
    request, each redirect included, to an https host on the allow-list (a redirect to plain http
    or another host is refused, not followed); a read timeout; every body byte counted against
    the current ``_Budget`` while it is read."""
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    from harness.store.fetch import timeout_s

    class Counted(httpx2.SyncByteStream):
        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            for chunk in self.inner:
                if _BUDGET:
                    _BUDGET[-1].take(len(chunk))
                yield chunk

        def close(self):
            self.inner.close()

    class Guard(httpx2.BaseTransport):
        def __init__(self, inner):
            self.inner = inner

        def handle_request(self, request):
            check_url(str(request.url), "hub download", host_list=True)
            resp = self.inner.handle_request(request)
            resp.stream = Counted(resp.stream)
            return resp

        def close(self):
            self.inner.close()

    client = httpx2.Client(event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True, timeout=httpx2.Timeout(timeout_s()))
    # the client's own transports (proxies from the environment included), each behind the guard
    client._transport = Guard(client._transport)
    client._mounts = {k: (Guard(v) if v is not None else None) for k, v in client._mounts.items()}
    return client


def _allow_network():
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; follow the environment now. Its
    HTTP client is the guarded one (``_guarded_client``)."""
    from huggingface_hub import constants, set_client_factory

    set_client_factory(_guarded_client)
    constants.HF_HUB_OFFLINE = offline()
    if "HF_HUB_DOWNLOAD_TIMEOUT" not in os.environ:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = int(timeout_s())
    if "HF_HUB_ETAG_TIMEOUT" not in os.environ:
        constants.HF_HUB_ETAG_TIMEOUT = int(timeout_s())


@contextmanager
def _budget(what: str, name: str):
    """The download cap of ``what``, counted on the bytes of the requests made inside."""
    _BUDGET.append(_Budget(what, name))
    try:
        yield
    finally:
        _BUDGET.pop()


@contextmanager
def _download_errors(what: str, name: str):
    """Any failure of a hub download inside is one line naming ``what`` and ``name``
    (huggingface_hub and httpx raise many types); the harness's own errors pass as they are."""
    try:
        yield
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001
        raise HarnessError(f"{what}: could not download {name}: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no detail"


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

        with _download_errors(what, name):
            meta = get_hf_file_metadata(hf_hub_url(repo, filename, repo_type=repo_type, revision=revision, endpoint=endpoint()), timeout=timeout_s())
            check_size(meta.size, what, name)
            _bars(progress)
            with _budget(what, name):
                got = hf_hub_download(repo, filename, revision=revision, repo_type=repo_type, etag_timeout=timeout_s(), **_hf_kwargs())
    sha = verify_blob(Path(got), what, name)
    if sha256 and sha256 != PLACEHOLDER and sha != sha256:
        raise HarnessError(f"{what}.sha256: {name} has sha256 {sha}, expected {sha256}")
    return Path(got)


def _tree(repo: str, revision: str, repo_type: str) -> list:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    return [f for f in HfApi(endpoint=endpoint()).list_repo_tree(repo, recursive=True, revision=revision, repo_type=repo_type) if isinstance(f, RepoFile)]


def repo_file_names(repo: str, revision: str, repo_type: str, what: str) -> set[str]:
    """The paths of every file of a repository at a commit, as the hub lists them (online)."""
    try:
        _allow_network()
        return {f.path for f in _tree(repo, revision, repo_type)}
    except Exception as e:  # noqa: BLE001 (huggingface_hub / httpx raise several types for an unreachable hub)
        raise HarnessError(f"{what}: could not list {repo}@{revision[:12]}: {type(e).__name__}: {_first_line(e)}") from None


def _matches(path: str, allow: list[str] | None, ignore: list[str] | None) -> bool:
    if allow and not any(fnmatch.fnmatch(path, p) for p in allow):
        return False
    return not (ignore and any(fnmatch.fnmatch(path, p) for p in ignore))


def hub_snapshot(repo: str, revision: str, *, repo_type: str = "model", allow: list[str] | None = None, ignore: list[str] | None = None,
                 what: str = "hub repository", hint: str | None = None, download: bool = True, progress: bool = False,
                 required: list[str] | tuple[str, ...] = (), refresh: bool = False) -> Path:
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

        with _download_errors(what, name):
            files = [f for f in _tree(repo, revision, repo_type) if _matches(f.path, allow, ignore)]
            check_size(sum(f.size for f in files), what, name)
            _bars(progress)
            with _budget(what, name):  # the cap counted on the bytes as they arrive, not the listing's sizes
                path = snapshot_download(repo, revision=revision, repo_type=repo_type, allow_patterns=[f.path for f in files] or ["__none__"],
                                         etag_timeout=timeout_s(), max_workers=1, **_hf_kwargs())
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


def pipeline_allow(index: dict) -> list[str]:
    """The allow patterns of a diffusers pipeline's snapshot, from its ``model_index.json``: the
    index itself and, per component it names (the safety checker left out), the files directly in
    that component's folder that are configs or tokenizer files (``*.json``, ``*.txt``, ``*.model``)
    or safetensors weights. With ``PIPELINE_IGNORE`` this leaves out every variant (``.fp16.``,
    EMA), folders no component names (SDXL's ``vae_1_0``, ``vae_decoder`` / ``vae_encoder`` ONNX
    exports), root single files (``sd_xl_base_1.0.safetensors``) and other formats."""
    allow = ["model_index.json"]
    for comp, v in index.items():
        if comp.startswith("_") or comp in PIPELINE_SKIP or not (isinstance(v, list) and v and v[0] is not None):
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", comp):  # a folder name, not a pattern
            continue
        allow += [f"{comp}/*.{ext}" for ext in ("json", "txt", "model", "safetensors")]
    return allow


def pipeline_files(paths, index: dict) -> list[str]:
    """The files of a repository listing that a pipeline snapshot fetches (``pipeline_allow``,
    ``PIPELINE_IGNORE``), in listing order."""
    allow = pipeline_allow(index)
    return [p for p in paths if _matches(p, allow, PIPELINE_IGNORE)]


def _pipeline_allow_for(repo: str, revision: str, what: str, hint: str | None, download: bool) -> list[str]:
    """The allow patterns of ``repo`` @ ``revision``: from its model_index.json (the cached
    snapshot's, else downloaded and verified), or ``PIPELINE_ALLOW`` when nothing will be
    downloaded (offline: the first missing file is named by ``hub_snapshot``)."""
    import json

    cached = hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / revision / "model_index.json"
    if cached.is_file():
        path = cached
    elif offline() or not download:
        return PIPELINE_ALLOW
    else:
        path = hub_file(repo, revision, "model_index.json", what=what, hint=hint)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HarnessError(f"{what}: {repo}@{revision[:12]}:model_index.json is not readable JSON ({type(e).__name__})") from None
    if not isinstance(index, dict):
        raise HarnessError(f"{what}: {repo}@{revision[:12]}:model_index.json is not a JSON object")
    return pipeline_allow(index)


def pipeline_snapshot(repo: str, revision: str, what: str = "base_model", hint: str | None = None, download: bool = True, progress: bool = False) -> Path:
    """A Stable Diffusion pipeline from the hub at a commit, with every component's config and
    safetensors weights present, and only those (``pipeline_allow``: an SDXL repository's fp16
    copies, single files and ONNX / OpenVINO exports stay on the hub); offline, the first missing
    file is named; online, a cached snapshot that lost a file gets it again."""
    allow = _pipeline_allow_for(repo, revision, what, hint, download)
    try:
        return _complete_pipeline(hub_snapshot(repo, revision, allow=allow, ignore=PIPELINE_IGNORE, what=what, hint=hint,
                                               download=download, progress=progress, required=["model_index.json"]), repo, revision, what, hint)
    except HarnessError:
        if offline() or not download:
            raise
    allow = _pipeline_allow_for(repo, revision, what, hint, download)
    return _complete_pipeline(hub_snapshot(repo, revision, allow=allow, ignore=PIPELINE_IGNORE, what=what, hint=hint,
                                           progress=progress, required=["model_index.json"], refresh=True), repo, revision, what, hint)


def _complete_pipeline(snap: Path, repo: str, revision: str, what: str, hint: str | None) -> Path:
    import json


    # as a local base is checked: model_index.json naming only diffusers / transformers classes
    # (another library would be imported), configs within a suite's bounds, no links out of the cache
    check_model_folder(snap, what, allow_pickle=True)
    index = json.loads((snap / "model_index.json").read_text(encoding="utf-8"))
    for comp, v in index.items():
        if comp.startswith("_") or comp in ("safety_checker", "feature_extractor", "image_encoder") or not isinstance(v, list) or v[0] is None:
            continue
        folder = snap / comp
        if comp.startswith(("scheduler", "tokenizer")) or str(v[-1]).endswith(("Tokenizer", "TokenizerFast", "Scheduler")):  # no weights (SDXL: tokenizer_2)
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



# ----------------------------------------------------------------------------- one spec node
def pinned_path(root: Path, node, what: str, folder: bool = False, hint: str | None = None) -> Path:
    """The local file (or folder) behind a ``{path | hub, sha256}`` node of a suite, its sha256
    verified: a repository path, or a hub file / folder (from the cache; downloaded when online)."""
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


