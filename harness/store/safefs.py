"""The file-system side of the trust boundary: what a folder or file a pull request controls may
be before the harness hashes or loads it (docs/security.md).

Policy (chosen over "resolve, confine, then hash"): inside a checkpoint, base or results folder
every entry must be a regular file or a plain folder. A symbolic link, FIFO, socket or device
anywhere in it is refused, because what the hash covers must be exactly what diffusers, safetensors
or the site reads, and a link can be re-pointed after the hash. Hidden files are hashed like any
other (diffusers follows a shard index to ``unet/.shard.safetensors``). A FIFO is detected with
``lstat`` and never opened, so it cannot hang a run. ``inside`` confines a repository-relative
path a spec names to the repository.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from harness.errors import HarnessError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
LIBRARIES = {"diffusers", "transformers"}  # what a model_index.json may name (others would be imported)


def inside(root: Path, rel: str, what: str) -> Path:
    """Resolve a repository-relative path; refuse absolute paths and escapes (``..``, links)."""
    if not rel or "\x00" in rel or Path(rel).is_absolute():
        raise HarnessError(f"{what}: {rel!r} must be a path relative to the repository")
    try:
        root = root.resolve()
        p = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a name too long
        raise HarnessError(f"{what}: {rel!r} cannot be resolved ({one_line_error(e)})") from None
    if not p.is_relative_to(root):
        raise HarnessError(f"{what}: {rel!r} leaves the repository")
    return p


def one_line_error(e: BaseException) -> str:
    return " ".join(str(getattr(e, "strerror", None) or e).split())[:200]


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
        for entry in entries:
            p = Path(entry.path)
            mode = entry.stat(follow_symlinks=False).st_mode
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
            if k == "safety_checker" and isinstance(v, list) and v[:1] == ["stable_diffusion"]:
                continue  # diffusers' own pipeline module (Stable Diffusion's model_index.json names it); never loaded: safety_checker=None
            if isinstance(v, list) and v and v[0] is not None and v[0] not in LIBRARIES:
                raise HarnessError(f"{what}: model_index.json: {k}: library {str(v[0])[:40]!r} is not one of {', '.join(sorted(LIBRARIES))}")
    check_configs(path, what)


# What a folder's configs may ask of a run: the same bounds the suite's own settings have
# (``spec.suite.GenerationSettings``: images up to 4096 px, a multiple of 8), and a scheduler whose
# tables are small (Stable Diffusion trains on 1,000 timesteps; a config asking for 10**9 would
# allocate tens of GB when the pipeline loads).
MAX_NATIVE_PX = 4096
MAX_TRAIN_TIMESTEPS = 10_000
CONFIG_MAX_BYTES = 1 << 20


def _config(path: Path, rel: str, what: str) -> dict | None:
    """A component's JSON config (None when absent); unreadable, not JSON or not an object: one line."""
    import json

    f = path / rel
    if not f.is_file():
        return None
    try:
        if f.stat().st_size > CONFIG_MAX_BYTES:
            raise HarnessError(f"{what}: {rel} is larger than {CONFIG_MAX_BYTES} bytes")
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HarnessError(f"{what}: {rel} is not a readable JSON config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{what}: {rel} is not a JSON object")
    return data


def _int_in(cfg: dict, key: str, lo: int, hi: int, what: str, rel: str, required: bool = False) -> int | None:
    v = cfg.get(key)
    if v is None and not required:
        return None
    if isinstance(v, list) and v and key == "sample_size":  # diffusers allows [height, width]
        for x in v:
            _int_in({key: x}, key, lo, hi, what, rel, True)
        return max(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise HarnessError(f"{what}: {rel}: {key}: {str(v)[:40]!r} is not a whole number from {lo} to {hi}")
    return v


def check_configs(path: Path, what: str) -> None:
    """The configs of a pipeline folder (a base, a pipeline checkpoint, a hub snapshot) within
    the bounds above: ``unet`` ``sample_size`` and the ``vae``'s down-sampling give a native size
    of 8 to 4096 px; the scheduler's ``num_train_timesteps`` at most 10,000 and its betas finite
    numbers in [0, 1]; every config a JSON object. One line naming the file and field."""
    import math

    unet = _config(path, "unet/config.json", what)
    vae = _config(path, "vae/config.json", what)
    if unet is not None:
        _int_in(unet, "sample_size", 1, MAX_NATIVE_PX, what, "unet/config.json")
    if vae is not None:
        boc = vae.get("block_out_channels")
        if boc is not None and (not isinstance(boc, list) or not 1 <= len(boc) <= 8
                                or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 8192 for c in boc)):
            raise HarnessError(f"{what}: vae/config.json: block_out_channels: {str(boc)[:40]!r} is not a list of 1 to 8 channel counts")
    if unet is not None and vae is not None:
        native_px(unet, vae, what)
    sched = _config(path, "scheduler/scheduler_config.json", what)
    if sched is not None:
        rel = "scheduler/scheduler_config.json"
        _int_in(sched, "num_train_timesteps", 1, MAX_TRAIN_TIMESTEPS, what, rel)
        _int_in(sched, "steps_offset", 0, MAX_TRAIN_TIMESTEPS, what, rel)
        for k in ("beta_start", "beta_end"):
            v = sched.get(k)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1):
                raise HarnessError(f"{what}: {rel}: {k}: {str(v)[:40]!r} is not a number from 0 to 1")
        tb = sched.get("trained_betas")
        if tb is not None and (not isinstance(tb, list) or len(tb) > MAX_TRAIN_TIMESTEPS or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 <= b <= 1 for b in tb)):
            raise HarnessError(f"{what}: {rel}: trained_betas: not a list of at most {MAX_TRAIN_TIMESTEPS} numbers from 0 to 1")


def native_px(unet: dict, vae: dict, what: str) -> int:
    """The native image size of a pipeline from its unet and vae configs, refused (one line)
    outside 8..4096 px or not a multiple of 8, as a suite's own height / width would be."""
    sample = _int_in(unet, "sample_size", 1, MAX_NATIVE_PX, what, "unet/config.json", required=True)
    boc = vae.get("block_out_channels")
    if not isinstance(boc, list) or not 1 <= len(boc) <= 8:
        raise HarnessError(f"{what}: vae/config.json: block_out_channels: {str(boc)[:40]!r} is not a list of 1 to 8 channel counts")
    n = sample * 2 ** (len(boc) - 1)
    if not 8 <= n <= MAX_NATIVE_PX or n % 8:
        raise HarnessError(f"{what}: native image size {n}x{n} (unet sample_size {sample} x vae scale {2 ** (len(boc) - 1)}) "
                           f"is outside 8..{MAX_NATIVE_PX} px or not a multiple of 8, the bounds of a suite's own generation.height / width")
    return n
