"""What the submission and suite models share: the strict base model, sha256 / slug / https field
types, pinned files (a repository path or a hub file) and the repository-confinement checks
every path goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from harness.errors import HarnessError
from harness.store.hashing import sha256_file
from harness.store.safefs import inside, one_line_error  # noqa: F401 (re-exported to spec/)
from harness.store.fetch import check_url

SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256")]
SLUG = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")


def _https(url: str) -> str:
    try:
        return check_url(url, "url")
    except HarnessError as e:
        raise ValueError(str(e).removeprefix("url: ")) from None


# https only (plain http to 127.0.0.1 only under the tests' explicit allowance: fetch.check_url)
HTTPS_URL = Annotated[str, AfterValidator(_https), Field(json_schema_extra={"pattern": "^https://"})]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def exactly_one(model, *names: str, given=bool) -> None:
    """Refuse a model with none or several of these (alternative) fields set."""
    if sum(1 for k in names if given(getattr(model, k))) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)}")


class HubRef(Strict):
    """A file (``filename``) or folder (``subfolder``) of a hub repository at a pinned commit."""

    repo: str = Field(pattern=r"^\w[\w.-]*/\w[\w.-]*$", description="owner/name; no part may start with '.'")
    revision: str = Field(pattern=r"^[0-9a-f]{40}$", description="a full commit sha")
    filename: str | None = Field(default=None, pattern=r"^\w[\w.-]*(/\w[\w.-]*)*$", description="path in the repository; no '..', no leading '/'")
    subfolder: str | None = Field(default=None, pattern=r"^(\w[\w.-]*(/\w[\w.-]*)*)?$")
    repo_type: Literal["model", "dataset"] = "model"


class PinnedRef(Strict):
    """A file or folder in the repository (``path``) or on the hub (``hub``: {repo, revision,
    filename | subfolder}), pinned by sha256 (``hub.pinned_path`` resolves and verifies it)."""

    path: str | None = None
    hub: HubRef | None = None
    sha256: SHA256

    @model_validator(mode="after")
    def _one_source(self):
        exactly_one(self, "path", "hub")
        return self

    def node(self) -> dict:
        """As the suite's YAML gives it (what ``hub.pinned_path`` reads)."""
        return self.model_dump(exclude_none=True)


class WeightsFile(PinnedRef):
    """A weights file in the repository (``path``) or on the hub (``hub``), pinned by sha256
    (an all-zero placeholder is filled in from ``suites/<id>.lock.yaml``: ``unlearn pin``)."""

    @model_validator(mode="after")
    def _hub_file(self):
        if self.hub and not self.hub.filename:
            raise ValueError("hub: needs filename")
        return self


def pinned_file(root: Path, path: str, sha256: str, what: str) -> Path:
    """A file inside the repository whose sha256 must match before anything reads it."""
    p = inside(root, path, f"{what}.path")
    if not p.is_file():
        raise HarnessError(f"{what}.path: {path}: no such file")
    got = sha256_file(p)
    if got != sha256:
        raise HarnessError(f"{what}.sha256: {path} has sha256 {got}, expected {sha256}")
    return p
