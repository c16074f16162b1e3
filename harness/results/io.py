"""Results files on disk: finding them in a folder, reading one back through the model
(``harness.results.model``), writing one.

Results files travel: they are committed, uploaded as CI artifacts and attached to pull
requests, so a reader treats them as untrusted input. ``read_result`` refuses, in one line, a
file that is a symbolic link, too large, not UTF-8 JSON, or not a results document by the
model's strict reading (fields it does not know are kept as they are:
``docs/results-schema.md`` has the whole document).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.store.fsutil import atomic_write
from harness.results.model import ResultsFile
from harness.results.check import check_depth, check_document, check_name, parse_int

MAX_RESULT_BYTES = 64 << 20


def one_line(text: object) -> str:
    return " ".join(str(text).split())


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


def _read(path: str | Path) -> tuple[Any, ResultsFile]:
    data = read_json_file(Path(path), MAX_RESULT_BYTES)
    doc = ResultsFile.read(data)

    check_name(doc.submission.name)
    check_document(data)  # what the file says about itself agrees with what a reader recomputes
    return data, doc

METHOD_SEEDS_SUFFIX = ".method-seeds.json"  # `unlearn regress --method-seeds N` writes <name>.method-seeds.json


def method_seed_files(folder: str | Path) -> list[Path]:
    """The folder's method-seed spreads (``<name>.method-seeds.json``, regular files, sorted):
    not results files, read by the leaderboard beside them."""
    import os
    import stat

    return [p for p in sorted(Path(folder).glob(f"*{METHOD_SEEDS_SUFFIX}")) if stat.S_ISREG(os.lstat(p).st_mode)]


def read_results_file(path: str | Path) -> ResultsFile:
    """Parse and validate one results file, as the model; ``ValueError`` says in one line why
    it is refused."""
    return _read(path)[1]


def read_result(path: str | Path) -> dict:
    """``read_results_file``, returning the JSON object the readers index: the file's own
    object once the model accepted it, which is the model's ``to_json`` key for key (the
    lossless rule, tests/test_results_model.py) without the cost of dumping it again."""
    return _read(path)[0]


def write_result(path: Path, doc: ResultsFile | dict) -> None:
    """Write a results file atomically (2-space indented JSON, the order of its fields kept)."""
    data = doc.to_json() if isinstance(doc, ResultsFile) else doc
    atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


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
        data = json.loads(path.read_bytes().decode("utf-8"), parse_int=parse_int)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as e:  # parse_int: an integer too large for any reader
        raise ValueError(f"not a results-sized JSON ({one_line(e)})") from None
    check_depth(data)
    return data
