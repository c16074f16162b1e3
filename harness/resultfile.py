"""Reading a results JSON back: what every reader of results files (the leaderboard, ``unlearn
compare``, ``unlearn summary``, ``unlearn regress``) may rely on, checked once here.

Results files travel: they are committed, uploaded as CI artifacts and attached to pull
requests, so a reader treats them as untrusted input. ``read_result`` refuses, in one line, a
file that is a symbolic link, too large, not UTF-8 JSON, or lacks the typed fields the readers
use (other fields are kept as they are: ``docs/results-schema.md`` has the whole document).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_RESULT_BYTES = 64 << 20


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Open(BaseModel):
    """The fields the readers use, strictly typed; other fields are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)


class _Target(_Open):
    concept: str = Field(min_length=1)
    kind: str = Field(min_length=1)


class _Method(_Open):
    name: str
    params: dict[str, Any] = {}
    paper_url: str | None = None
    code_url: str | None = None


class _Checkpoint(_Open):
    kind: str | None = None
    path: str | None = None
    url: str | None = None
    sha256: str | None = None


class _Submission(_Open):
    file: str | None = None
    name: str = Field(min_length=1, max_length=200)
    method: _Method
    checkpoint: _Checkpoint
    targets: list[_Target] = Field(min_length=1)


class _Sample(_Open):
    prompt: str
    seed: int
    base: str
    unlearned: str
    target: bool = False  # the prompt names a target (evaluate.sample_pairs decides)


class _Suite(_Open):
    id: str = Field(min_length=1)
    version: str | None = None
    samples: list[_Sample] = []
    seeds: list[int] = []


class _Interval(_Open):
    """A ``ci`` / ``delta_ci`` / ``margin_ci`` (harness.stats); absent or null in older files."""

    low: float
    high: float
    level: float | None = None
    method: str | None = None


class _Metric(_Open):
    suite: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    label: str | None = None
    target: str = Field(min_length=1)
    target_kind: str | None = None
    value: float | None = None
    base_value: float | None = None
    threshold: str | None = None
    bound: float | None = None
    verdict: Literal["pass", "fail", "inconclusive", "error", "info"]
    higher_is_better: bool | None = None
    tolerance: float | None = None
    ci: _Interval | None = None
    delta_ci: _Interval | None = None
    margin_ci: _Interval | None = None
    ci_reason: str | None = None
    verdict_point: Literal["pass", "fail"] | None = None
    scores: dict[str, Any] | None = None


class _Result(_Open):
    schema_version: str = Field(pattern=r"^1\.\d+$")
    harness: dict[str, Any]
    started: str | None = None
    finished: str | None = None
    complete: bool = True
    submission: _Submission
    environment: dict[str, Any] = {}
    efficiency: dict[str, Any] = {}
    suites: list[_Suite]
    metrics: list[_Metric] = Field(min_length=1)


def check_result(data: Any) -> None:
    """Raise ``ValueError`` (one line) when ``data`` is not a results document the site can show."""
    try:
        _Result.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ValueError(f"{loc}: {err['msg']}{more}") from None
    seen = set()
    for m in data["metrics"]:
        key = (m["suite"], m["metric"], m["target"])
        if key in seen:
            raise ValueError(f"metrics: two records for suite {key[0]!r}, metric {key[1]!r}, target {key[2]!r}")
        seen.add(key)


def results_files(folder: str | Path) -> list[Path]:
    """The one discovery rule every reader of a results folder uses (``leaderboard build``,
    ``refresh``, ``compare``-style gates, ``regress``): ``<folder>/*.json``, not recursive,
    regular files only (symbolic links and anything else are left out), sorted by name."""
    import os
    import stat

    out = []
    for p in sorted(Path(folder).glob("*.json")):
        if p.name == "ATTESTATION.json" or p.name.endswith(METHOD_SEEDS_SUFFIX):  # the manifest, a method-seed spread: not results
            continue
        try:
            if stat.S_ISREG(os.lstat(p).st_mode):
                out.append(p)
        except OSError:
            continue
    return out


METHOD_SEEDS_SUFFIX = ".method-seeds.json"  # `unlearn regress --method-seeds N` writes <name>.method-seeds.json


def method_seed_files(folder: str | Path) -> list[Path]:
    """The folder's method-seed spreads (``<name>.method-seeds.json``, regular files, sorted):
    not results files, read by the leaderboard beside them."""
    import os
    import stat

    return [p for p in sorted(Path(folder).glob(f"*{METHOD_SEEDS_SUFFIX}")) if stat.S_ISREG(os.lstat(p).st_mode)]


def read_result(path: str | Path) -> dict:
    """Parse and validate one results file; ``ValueError`` says in one line why it is refused."""
    path = Path(path)
    data = read_json_file(path, MAX_RESULT_BYTES)
    check_result(data)
    from .attest import check_name

    check_name(data["submission"]["name"])
    return data


def read_json_file(path: Path, limit: int) -> Any:
    """A JSON file that must be a regular file of at most ``limit`` bytes, UTF-8; ``ValueError``
    (one line) otherwise; a folder is an ``IsADirectoryError``."""
    import os
    import stat

    if path.is_symlink():
        raise ValueError("is a symbolic link")
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise ValueError("not a regular file (a FIFO, socket or device is not opened)")
    if path.stat().st_size > limit:
        raise ValueError(f"larger than {limit >> 20} MiB")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
