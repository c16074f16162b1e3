"""The README's UnlearnCanvas-shaped table of every hosted method, from results files.

    python benchmarks/method_table.py leaderboard/results [--overhead OVERHEAD.json]

One row per method and toy world (the toy submissions ``toy-<method>-style`` /
``toy-<method>-object`` and ``toy-base``, the no-erasure control, on the SD-1.x toy world; the
same names with ``toy-xl-`` on the SDXL one, where a method its authors ship for SD-1.x only
reads "n/a"): style and object UA / IRA / CRA (toy-canvas), FID,
Integrity and CCS-forget of the style target, Pre-ASR -> ASR (UnlearnDiffAtk) and the TI ASR
of the object target (toy-robustness), erase time (wall and CPU) / peak memory / storage from
the results' efficiency block, and the sampling cost per image against the base's (an
inference-time method pays it at every image: the JSON that ``benchmarks/inference_overhead.py``
prints, given as ``--overhead``; a checkpoint's method samples at the base's cost). Values are the
harness's; "-" where a file or record is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {"uce": "UCE", "esd": "ESD-x", "fmn": "FMN", "ca": "CA", "salun": "SalUn", "rece": "RECE", "negprompt": "negative prompt",
          "sld": "SLD", "safree": "SAFREE", "mace": "MACE", "spm": "SPM", "advunlearn": "AdvUnlearn", "sa": "Selective Amnesia"}


def methods() -> list[tuple[str, str]]:
    """The control, then every registered method (the registry lists names without importing
    torch); an inference-time method is labelled as such (no weights changed: its cost is paid at
    every image, and its erase columns are "-")."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from harness.methods import REGISTRY

    out = [("base", "none (control)")]
    order = list(LABELS)
    for name in sorted(REGISTRY.names(), key=lambda n: (order.index(n) if n in order else len(order), n)):
        label = LABELS.get(name, name)
        out.append((name, f"{label} (inference-time)" if REGISTRY.get(name).kind == "inference" else label))
    return out


def load(folder: Path, name: str) -> dict | None:
    p = folder / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def metric(doc: dict | None, suite: str, name: str, target: str | None = None) -> dict | None:
    for m in (doc or {}).get("metrics", []):
        if m["suite"] == suite and m["metric"] == name and (target is None or m["target"] == target) and m.get("value") is not None:
            return m
    return None


def f(m: dict | None, digits: int = 3) -> str:
    return "-" if m is None else f"{m['value']:.{digits}f}"


def efficiency(doc: dict | None) -> tuple[str, str, str]:
    e = (doc or {}).get("efficiency") or {}
    t, mem, st = (e.get(k, {}).get("value") for k in ("time_s", "peak_memory_bytes", "storage_bytes"))
    return ("-" if t is None else f"{t:.2f} s", "-" if mem is None else f"{mem / 1e9:.2f} GB", "-" if st is None else f"{st / 1e3:.0f} kB")


def cpu_s(doc: dict | None, root: Path) -> str:
    rec = ((doc or {}).get("submission") or {}).get("method_record")
    p = root / rec if rec else None
    if not p or not p.is_file():
        return "-"
    c = json.loads(p.read_text()).get("efficiency", {}).get("cpu_s")
    return "-" if c is None else f"{c:.1f} s"


WORLDS = [("toy", "toy (SD-1.x)"), ("toy-xl", "toy-xl (SDXL)")]


def unsupported(key: str, world: str) -> str | None:
    """Why a method does not run on a toy world's model family (None: it does, or it is the control)."""
    if key == "base":
        return None
    from harness.families import family_of
    from harness.methods import REGISTRY
    from harness.toy.paths import PIPELINES

    info = REGISTRY.get(key)
    return None if info.supports(family_of(PIPELINES[world])) else (info.families_why or "not on this model family")


def sampling_cost(key: str, world: str, overhead: dict | None) -> str:
    """An image's sampling time against the base's: measured for an inference-time method (the
    toy world's figure of ``inference_overhead.py``), the base's own for a checkpoint."""
    from harness.methods import REGISTRY

    if key == "base" or REGISTRY.get(key).kind != "inference":
        return "1x (base)"
    ratio = (overhead or {}).get("ratio_to_base", {}).get(key)
    return "-" if ratio is None or world != "toy" else f"{ratio:.2f}x"


def compact(folder: Path) -> None:
    """The README's table: the toy world's rows, erasure and retention of both targets, the
    object's UnlearnDiffAtk ASR, and how the method is applied."""
    print("| method | kind | style UA / IRA / CRA | object UA / IRA / CRA | object Pre-ASR -> ASR (UnlearnDiffAtk) |")
    print("| --- | --- | --- | --- | --- |")
    root = folder.resolve().parents[1]
    for key, label in methods():
        row = row_of(folder, root, "toy", key, label)
        if row is None or row[1] == "n/a":
            continue
        from harness.methods import REGISTRY

        kind = "none" if key == "base" else "inference-time" if REGISTRY.get(key).kind == "inference" else "checkpoint"
        print(f"| {label.removesuffix(' (inference-time)')} | {kind} | {' / '.join(row[1:4])} | {' / '.join(row[4:7])} | "
              f"{row[10]} |")


def main(folder: str, overhead_file: str | None = None) -> None:
    folder = Path(folder)
    root = folder.resolve().parents[1]
    overhead = json.loads(Path(overhead_file).read_text()) if overhead_file else None
    print("| world | method | style UA | style IRA | style CRA | object UA | object IRA | object CRA | FID (style) | Integrity (style) "
          "| CCS-forget (style) | object Pre-ASR -> ASR | object TI ASR | erase wall (CPU) style / object | peak memory | storage "
          "| sampling per image |")
    print("| " + " | ".join(["---"] * 17) + " |")
    for world, world_label in WORLDS:
        for key, label in methods():
            row = row_of(folder, root, world, key, label)
            if row is not None:
                print("| " + " | ".join([world_label, *row, sampling_cost(key, world, overhead) if row[1] != "n/a" else "n/a"]) + " |")


def row_of(folder: Path, root: Path, world: str, key: str, label: str) -> list[str] | None:
    """One method's cells on one toy world; None when it has no results there and runs there."""
    if key == "base":
        st = ob = load(folder, f"{world}-base")
    else:
        st, ob = load(folder, f"{world}-{key}-style"), load(folder, f"{world}-{key}-object")
    if st is None and ob is None:
        why = unsupported(key, world)
        return None if why is None else [label, *(["n/a"] * 11), f"n/a: {why}", "-", "-"]
    row = [label]
    row += [f(metric(st, "toy-canvas", m, "striped")) for m in ("ua", "ira", "cra")]
    row += [f(metric(ob, "toy-canvas", m, "triangle")) for m in ("ua", "ira", "cra")]
    row += [f(metric(st, "toy-fid", "fid", "striped"), 2), f(metric(st, "toy-integrity", "integrity", "striped")),
            f(metric(st, "toy-concealment", "ccs_forget", "striped"))]
    pre, asr = metric(ob, "toy-robustness", "pre_asr", "triangle"), metric(ob, "toy-robustness", "asr", "triangle")
    row += [f"{f(pre, 2)} -> {f(asr, 2)}", f(metric(ob, "toy-robustness", "ti_asr", "triangle"), 2)]
    (ts, mem, sto), (to, _, _) = efficiency(st), efficiency(ob)
    row += [f"{ts} ({cpu_s(st, root)}) / {to} ({cpu_s(ob, root)})" if key != "base" else "0", mem if key != "base" else "0", sto]
    return row


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="leaderboard/results")
    ap.add_argument("--overhead", default=None, help="the JSON benchmarks/inference_overhead.py printed")
    ap.add_argument("--compact", action="store_true", help="the README's short table (toy world)")
    args = ap.parse_args()
    if args.compact:
        compact(Path(args.results))
    else:
        main(args.results, args.overhead)
