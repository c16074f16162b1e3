"""Reading untrusted YAML: the safe loader only (no duplicate keys, anchors, aliases or binary),
size and depth caps, and pydantic errors as one line each (``file: field: problem``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
import re

from pydantic import ValidationError

from harness.errors import HarnessError
from harness.spec.common import one_line_error

def _format_validation(path: Path, err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]).replace("\r", "\\r").replace("\n", "\\n") or "(top level)"  # one line, whatever the keys
        msg = e["msg"].removeprefix("Value error, ").replace("\n", " ")
        named = re.match(r"^([A-Za-z_][\w.]*): (.+)$", msg) if not e["loc"] else None
        if named:  # a model-level check naming its field ("checkpoint: Field required ...")
            loc, msg = named.groups()
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{path}: {loc}: {msg}")
    return out


def describe(err: ValidationError, prefix: str = "params") -> str:
    """A pydantic error as one line: ``params.field: problem; ...``."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"])).replace("\n", "\\n")
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ").replace("\n", " ")
        out.append(msg if not e["loc"] and msg.startswith(f"{prefix}.") else f"{loc}: {msg}")  # a message naming its own field
    return "; ".join(out)


class _SafeUniqueLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader that also refuses a key given twice in one mapping (YAML
    would silently keep the last one, e.g. a second ``sha256``)."""

    def compose_node(self, parent, index):
        # An alias (``*a``) can multiply a small file into 10^9 nodes (an "alias bomb"), and a
        # merge key needs one: untrusted YAML gets neither anchors nor aliases.
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not accepted", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: SafeLoader's own check reports it
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        return super().construct_mapping(node, deep)


MAX_YAML_BYTES = 256 << 10
MAX_YAML_DEPTH = 16
MAX_YAML_NODES = 100_000


def _too_deep(data: Any) -> str | None:
    """Why a parsed document is refused for its shape (deeper or larger than any real one)."""
    stack, seen = [(data, 0, "(top level)")], 0
    while stack:
        x, depth, where = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            return f"(yaml): more than {MAX_YAML_NODES} values"
        if depth > MAX_YAML_DEPTH:
            return f"{where}: nested more than {MAX_YAML_DEPTH} deep"
        if isinstance(x, dict):
            stack += [(v, depth + 1, f"{where}.{k}" if depth else str(k)) for k, v in x.items()]
        elif isinstance(x, list):
            stack += [(v, depth + 1, f"{where}.{i}" if depth else str(i)) for i, v in enumerate(x)]
        elif isinstance(x, bytes):
            return f"{where}: binary data (!!binary) is not accepted"
    return None


def read_yaml(path: str | Path) -> Any:
    """Parse YAML with the safe loader only; one-line errors for a missing file or bad YAML."""
    import os
    import stat

    p = Path(path)
    try:
        if "\x00" in str(p):
            raise ValueError("NUL in the path")
        if p.is_symlink():
            raise HarnessError(f"{p}: is a symbolic link (refused before reading: it could point outside the repository)")
        mode = os.stat(p).st_mode
    except (OSError, ValueError, RuntimeError):
        raise HarnessError(f"{p!s:.200}: no such file") from None
    if stat.S_ISDIR(mode):
        raise HarnessError(f"{p}: no such file (a folder)")
    if not stat.S_ISREG(mode):
        raise HarnessError(f"{p}: not a regular file (a FIFO, socket or device is not opened)")
    if os.stat(p).st_size > MAX_YAML_BYTES:
        raise HarnessError(f"{p}: larger than {MAX_YAML_BYTES >> 10} KiB (submission and suite files are small)")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_SafeUniqueLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HarnessError(f"{p}: (yaml) {where}: {problem}") from None
    except UnicodeDecodeError:
        raise HarnessError(f"{p}: not UTF-8 text") from None
    except RecursionError:
        raise HarnessError(f"{p}: (yaml): nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a !!binary that is not base64, a bad timestamp
        raise HarnessError(f"{p}: (yaml): {one_line_error(e)}") from None
    why = _too_deep(data)
    if why:
        raise HarnessError(f"{p}: {why}")
    if not isinstance(data, dict):
        raise HarnessError(f"{p}: (top level): expected a mapping, got {type(data).__name__}")
    return data


class SpecErrors(HarnessError):
    """Several one-line problems with one file."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def validate_yaml_file(cls, path: str | Path):
    """The YAML file at ``path`` (safe loader) validated as the pydantic model ``cls``; every
    problem one line naming the file and field (``SpecErrors``)."""
    p = Path(path)
    data = read_yaml(p)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SpecErrors(_format_validation(p, e)) from None
