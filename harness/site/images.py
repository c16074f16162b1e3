"""The sample images of the site: copied from ``<results>/images/<sha256>.png`` only when the
bytes hash to the name and are a PNG; a symbolic link (the folder or a file) is never followed."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness.results.io import one_line
from harness.site.load import Report, Run

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class ImageState:
    ok: set[str] = field(default_factory=set)
    bad: dict[str, str] = field(default_factory=dict)  # sha -> why


def copy_images(runs: list[Run], src: Path | None, dst: Path, report: Report) -> ImageState:
    """Copy every sample image the given runs name from ``src/<sha256>.png`` to
    ``dst/<sha256>.png``, only when its bytes hash to the name and it is a PNG."""
    st = ImageState()
    for run in runs:
        for s in run.data["suites"]:
            for smp in s.get("samples", []):
                for side in ("base", "unlearned"):
                    sha = smp[side]
                    if sha in st.ok or sha in st.bad:
                        continue
                    why = check_image(src, sha)
                    if why:
                        st.bad[sha] = why
                        report(f"image unavailable: {run.file}: suite {one_line(s['id'])}: {side} image of {one_line(smp['prompt'])!r} seed {smp['seed']}: {why}")
                        continue
                    dst.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / f"{sha}.png", dst / f"{sha}.png")
                    st.ok.add(sha)
    return st


def check_image(src: Path | None, sha: str) -> str | None:
    if src is None:
        return "the images folder is a symbolic link (not followed)"
    if not SHA256_RE.match(sha):
        return "not a sha256"
    p = src / f"{sha}.png"
    if p.is_symlink() or not p.is_file():
        return f"no file images/{sha}.png"
    data = p.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        return f"images/{sha}.png has sha256 {got}"
    if not data.startswith(PNG_MAGIC):
        return "not a PNG"
    return None


def images_dir(results: Path, report: Report) -> Path | None:
    """``results/images``, unless it is a symbolic link (or resolves outside ``results``): then
    an empty stand-in, so nothing outside the results folder is read."""
    d = results / "images"
    if d.is_symlink() or (d.exists() and not d.resolve().is_relative_to(results.resolve())):
        report(f"skipped {d}: a symbolic link (images are read from inside the results folder only)")
        return None
    return d
