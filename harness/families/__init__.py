"""Model families: how a base model of one architecture is loaded, how a checkpoint is applied to it, and the parts of it that methods and attacks use.

``get(name)`` is a family by name, ``family_of(folder or model_index)`` the family that
recognises a base folder, ``family_of_pipeline(pipe)`` the family a loaded pipeline belongs to.
Built-in families are the modules of this package (``<name>.py`` with ``FAMILY``); third-party
ones are found by the Python entry point group ``unlearn_harness.families`` (each entry point
loads a family object, or a class that makes one with no arguments): one ``harness.registry``
pattern, as for methods, metrics, attacks and scorers. The contract they meet is ``harness.families.base.ModelFamily``.
"""

from __future__ import annotations

import json
import pkgutil
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.registry import GROUPS, Registry

ENTRY_POINT_GROUP = GROUPS["family"]
DEFAULT = "sd1"  # the family of the toy world and of a bare module with no pipeline around it
NOT_FAMILIES = {"base", "guidance"}  # modules of this package that are not a family


def _family(name: str, obj: object):
    """A registry entry -> the family object: a family, or a class that makes one with no arguments."""
    from harness.families.base import ModelFamily

    fam = obj() if isinstance(obj, type) else obj
    if not isinstance(fam, ModelFamily):
        raise TypeError("is not a ModelFamily (harness.families.base)")
    return fam


def _new_registry() -> Registry:
    """The harness's own families, one module each (``harness/families/<name>.py`` with ``FAMILY``,
    imported on first use: torch stays unloaded), then the entry-point group's."""
    reg: Registry = Registry("model family", ENTRY_POINT_GROUP, _family)
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name not in NOT_FAMILIES:
            reg.register(m.name, f"{__name__}.{m.name}:FAMILY")
    return reg


REGISTRY = _new_registry()


def registry() -> dict[str, Any]:
    """name -> family object, every family loaded (the harness's own, then the plugins'; a plugin
    cannot take a name of the harness's own)."""
    return dict(REGISTRY.items())


def _in_order():
    """The families one at a time, the harness's own first: a plugin is loaded only when no
    family before it matched (an installed plugin never runs on a base a built-in recognises)."""
    for name in REGISTRY.names():
        yield REGISTRY.get(name)


def reset() -> None:
    """The harness's own families again; entry points are read again on next use."""
    global REGISTRY
    REGISTRY = _new_registry()


def register(family, name: str | None = None) -> None:
    """Add a family in code (a test, a notebook)."""
    REGISTRY.register(name or family.name, family)


def names() -> list[str]:
    return sorted(REGISTRY.names())


def get(name: str):
    """The family called ``name``; an unknown name is a one-line error naming close matches."""
    return REGISTRY.get(name)


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
    for fam in _in_order():
        if fam.recognises(index):
            return fam
    cls = index.get("_class_name", "no _class_name")
    raise HarnessError(f"{what}: {where} ({cls}) is not a pipeline of any known model family ({', '.join(names())})")


def family_of_base(spec, root: Path):
    """The family of a submission's base model (``BaseModelSpec``): its folder's, or the
    cached hub snapshot's; the default family when a hub base is not cached here yet."""
    from harness.families.base import base_dir

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
    return any(fam.owns(obj) for fam in _in_order())


def family_of_pipeline(pipe):
    """The family a loaded pipeline belongs to (the first that owns it)."""
    for fam in _in_order():
        if fam.owns(pipe):
            return fam
    raise HarnessError(f"{type(pipe).__name__} is not a pipeline of any known model family ({', '.join(names())})")


def default():
    """The family used where no pipeline is at hand (a bare denoiser module)."""
    return get(DEFAULT)
