"""Model families: how a base model of one architecture is loaded, how a checkpoint is applied to it, and the parts of it that methods and attacks use.

``get(name)`` is a family by name, ``family_of(folder or model_index)`` the family that
recognises a base folder, ``family_of_pipeline(pipe)`` the family a loaded pipeline belongs to.
Built-in families are registered here in code; third-party ones are found by the Python entry
point group ``unlearn_harness.families`` (each entry point loads a family object, or a class
that makes one with no arguments). The contract they meet is ``harness.families.base.ModelFamily``.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError

ENTRY_POINT_GROUP = "unlearn_harness.families"
DEFAULT = "sd1"  # the family of the toy world and of a bare module with no pipeline around it

# name -> "module:attribute" of the built-in families (imported on first use: torch stays unloaded)
BUILTIN = {"sd1": "harness.families.sd1:SD1"}

_registry: dict[str, object] | None = None


def _load(ref: str):
    import importlib

    mod, _, attr = ref.partition(":")
    obj = getattr(importlib.import_module(mod), attr)
    return obj() if isinstance(obj, type) else obj


def _entry_points():
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def registry() -> dict[str, object]:
    """name -> family object: the built-ins, then every entry point (a name taken by a built-in
    is refused: a third-party package cannot replace the harness's own family)."""
    global _registry
    if _registry is None:
        from harness.families.base import ModelFamily

        reg = {name: _load(ref) for name, ref in BUILTIN.items()}
        for ep in _entry_points():
            if ep.name in reg:
                raise HarnessError(f"model family entry point {ep.name!r} ({ep.value}): the name is taken by a built-in family")
            try:
                fam = ep.load()
                fam = fam() if isinstance(fam, type) else fam
            except Exception as e:  # noqa: BLE001 (a broken plugin: one line naming it)
                raise HarnessError(f"model family entry point {ep.name!r} ({ep.value}) cannot be loaded ({type(e).__name__}: {e})") from None
            if not isinstance(fam, ModelFamily):
                raise HarnessError(f"model family entry point {ep.name!r} ({ep.value}) is not a ModelFamily (harness.families.base)")
            reg[ep.name] = fam
        _registry = reg
    return _registry


def reset() -> None:
    """Forget the registry (entry points are read again on next use)."""
    global _registry
    _registry = None


def register(family, name: str | None = None) -> None:
    """Add a family in code (a test, a notebook); replaces one of the same name."""
    registry()[name or family.name] = family


def names() -> list[str]:
    return sorted(registry())


def get(name: str):
    """The family called ``name``; an unknown name is a one-line error listing the known ones."""
    reg = registry()
    if name not in reg:
        raise HarnessError(f"model family {name!r} is unknown (known: {', '.join(sorted(reg))})")
    return reg[name]


def family_of(base: Path | str | dict, what: str = "base_model", where: str | None = None):
    """The family of a base: a pipeline folder, its ``model_index.json``, or the parsed index
    (``where`` names it in errors). No family recognising it is a one-line error naming the
    folder and its pipeline class."""
    where = where or "model_index.json"
    if isinstance(base, dict):
        index = base
    else:
        p = Path(base)
        f = p if p.name == "model_index.json" else p / "model_index.json"
        where = f"{f.parent.name}/model_index.json" if where == "model_index.json" else where
        try:
            index = json.loads(f.read_text(encoding="utf-8"))
        except OSError as e:
            raise HarnessError(f"{what}: {where} cannot be read ({type(e).__name__})") from None
        except ValueError:  # UnicodeDecodeError included; the wording of safefs.check_model_folder
            raise HarnessError(f"{what}: model_index.json is not JSON (in {f.parent.name}/)") from None
    if not isinstance(index, dict):
        raise HarnessError(f"{what}: {where} is not a JSON object")
    for fam in registry().values():
        if fam.recognises(index):
            return fam
    cls = index.get("_class_name", "no _class_name")
    raise HarnessError(f"{what}: {where} ({cls}) is not a pipeline of any known model family ({', '.join(names())})")


def family_of_base(spec, root: Path):
    """The family of a submission's base model (``BaseModelSpec``): its folder's, or the
    cached hub snapshot's; the default family when a hub base is not cached here yet."""
    from harness.families.sd1 import base_dir

    d = base_dir(spec, root)
    if d is None:
        from harness.store.hub import pipeline_snapshot

        try:
            d = pipeline_snapshot(spec.hub_id, spec.revision, download=False)
        except HarnessError:
            return default()
    return family_of(d)


def is_pipeline(obj) -> bool:
    """Whether some known family owns ``obj`` (a loaded pipeline, not a loader or a recipe)."""
    return any(fam.owns(obj) for fam in registry().values())


def family_of_pipeline(pipe):
    """The family a loaded pipeline belongs to (the first that owns it)."""
    for fam in registry().values():
        if fam.owns(pipe):
            return fam
    raise HarnessError(f"{type(pipe).__name__} is not a pipeline of any known model family ({', '.join(names())})")


def default():
    """The family used where no pipeline is at hand (a bare denoiser module)."""
    return get(DEFAULT)
