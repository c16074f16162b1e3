"""Label maps of real classifiers: head output index -> class name, as the classifier's authors
number them. They are data files under ``harness/data/`` (each names the repository, file and
commit its facts come from), so a suite never restates a class order by hand: a list in the wrong
order silently misreads every prediction (UnlearnCanvas' Seed_Images sits at index 38, not last).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from harness.errors import HarnessError

DATA = Path(__file__).parents[1] / "data"
LABEL_MAPS = ("unlearncanvas",)  # the files a suite may name (scorer.labels)


@lru_cache(maxsize=None)
def label_map(name: str) -> dict[str, tuple[str, ...]]:
    """head -> class names in head index order (index i is the head's output i)."""
    if name not in LABEL_MAPS:
        raise HarnessError(f"unknown label map {name!r}; known: {', '.join(LABEL_MAPS)}")
    data = yaml.safe_load((DATA / f"{name}.yaml").read_text())
    out = {}
    for head, by_index in data.items():
        if head == "source":
            continue
        idx = sorted(by_index)
        if idx != list(range(len(idx))) or len(set(by_index.values())) != len(idx):
            raise HarnessError(f"harness/data/{name}.yaml: {head}: indices must be 0..n-1 with distinct names")
        out[head] = tuple(str(by_index[i]) for i in idx)
    return out


def source(name: str) -> dict:
    """Where a label map's facts come from (repository, commit, file), for results."""
    label_map(name)
    return dict(yaml.safe_load((DATA / f"{name}.yaml").read_text())["source"])
