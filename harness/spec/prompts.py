"""A suite's prompt set expanded into prompts with their labels: inline, template x values, or a
pinned CSV (in the repository or fetched at run time)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harness.errors import HarnessError
from harness.store.hashing import sha256_file
from harness.spec.common import inside, one_line_error
from harness.spec.suite import Suite
from harness.store.fetch import fetch

class Prompt(BaseModel):
    """One prompt of a suite with its labels (e.g. object, style) and optional per-prompt
    seed / guidance (CSV prompt sets)."""

    model_config = ConfigDict(frozen=True)
    text: str
    labels: dict[str, str] = {}
    seed: int | None = None
    guidance: float | None = None


MAX_CSV_BYTES = 16 << 20
MAX_PROMPTS = 100_000
MAX_PROMPT_CHARS = 2_000


def _csv_seed(text: str) -> int:
    """A seed from a CSV cell: an integer (``12`` or ``12.0``) in [0, 2**63); ``1e400`` or
    ``nan`` is a ValueError, never an OverflowError."""
    x = float(text)
    if not x.is_integer() or not 0 <= x < 2**63:
        raise ValueError(text)
    return int(x)


def expand_prompts(suite: Suite, root: Path, cache_dir: Path | None = None) -> list[Prompt]:
    ps = suite.prompts
    if ps.inline is not None:
        return [Prompt(text=t) for t in ps.inline]
    if ps.template is not None:
        tpl = ps.template
        keys = list(tpl.values)
        n = 1
        for v in tpl.values.values():
            n *= len(v)
        if n > MAX_PROMPTS:
            raise HarnessError(f"suite {suite.id}: prompts.template: {n} prompts (more than {MAX_PROMPTS})")
        out: list[Prompt] = []

        def rec(i: int, labels: dict[str, str]):
            if i == len(keys):
                shown = {k: v.replace("_", " ") for k, v in labels.items()} if tpl.underscores_to_spaces else labels
                out.append(Prompt(text=tpl.template.format(**shown), labels=dict(labels)))
                return
            for v in tpl.values[keys[i]]:
                rec(i + 1, {**labels, keys[i]: v})

        rec(0, {})
        return out
    src_spec = ps.csv
    assert src_spec is not None  # a prompt set has exactly one source (PromptSet._one_source)
    src = src_spec.path or src_spec.url
    if src_spec.url:
        path = fetch(src_spec.url, src_spec.sha256, cache_dir or root / ".unlearn-cache", f"suite {suite.id}: prompts.csv.url")
    else:
        path = inside(root, src_spec.path, f"suite {suite.id}: prompts.csv.path")  # type: ignore[arg-type]  # no url: a path
        if not path.is_file():
            raise HarnessError(f"suite {suite.id}: prompts.csv.path: {src}: no such file")
    got = sha256_file(path)
    if got != src_spec.sha256:
        raise HarnessError(f"suite {suite.id}: prompts.csv.sha256: {src} has sha256 {got}, expected {src_spec.sha256}")
    col = {"prompt": "prompt", "seed": "seed", "guidance": "guidance", **src_spec.columns}
    where = f"suite {suite.id}: prompts.csv: {src}"
    if path.stat().st_size > MAX_CSV_BYTES:
        raise HarnessError(f"{where}: larger than {MAX_CSV_BYTES >> 20} MiB")
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
        rows = list(reader)
    except UnicodeDecodeError as e:
        raise HarnessError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:  # e.g. a field over csv's field size limit
        raise HarnessError(f"{where}: line {reader.line_num}: {one_line_error(e)}") from None
    if len(rows) > MAX_PROMPTS:
        raise HarnessError(f"{where}: more than {MAX_PROMPTS} rows")
    if not rows:
        raise HarnessError(f"suite {suite.id}: prompts.csv: {src} has no rows")
    if col["prompt"] not in rows[0]:
        raise HarnessError(f"suite {suite.id}: prompts.csv: {src} has no {col['prompt']!r} column")
    out = []
    for i, r in enumerate(rows):
        try:
            seed = _csv_seed(r[col["seed"]]) if r.get(col["seed"]) not in (None, "") else None
            guidance = float(r[col["guidance"]]) if r.get(col["guidance"]) not in (None, "") else None
        except (ValueError, OverflowError):
            raise HarnessError(f"suite {suite.id}: prompts.csv: {src} row {i + 2}: seed/guidance is not a number") from None
        if guidance is not None and not 0 <= guidance <= 50:
            raise HarnessError(f"{where} row {i + 2}: guidance {guidance!r} is not a number in [0, 50]")
        if not isinstance(r.get(col["prompt"]), str) or len(r[col["prompt"]]) > MAX_PROMPT_CHARS:
            raise HarnessError(f"{where} row {i + 2}: prompt missing or longer than {MAX_PROMPT_CHARS} characters")
        labels = {k: v for k, v in r.items() if k not in col.values() and k and v is not None}
        out.append(Prompt(text=r[col["prompt"]], labels=labels, seed=seed, guidance=guidance))
    return out
