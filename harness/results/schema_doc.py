"""``docs/results-schema.md``, generated from ``harness.results.model`` (the field
descriptions and the models' docstrings), so the document cannot drift from the code.

Regenerate: ``python -m harness.results.schema_doc`` (writes docs/results-schema.md; ``--check``
exits 1 when the committed file is not current). ``tests/test_results_model.py`` checks it.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path

from harness.results import model

DOC = Path(__file__).resolve().parents[2] / "docs" / "results-schema.md"
COMMAND = "python -m harness.results.schema_doc"

# (section title, model): the order of the document
SECTIONS: list[tuple[str, type[model.Record]]] = [
    ("The file", model.ResultsFile),
    ("`harness`", model.Harness),
    ("`submission`", model.SubmissionRecord),
    ("`submission.method`", model.Method),
    ("`submission.checkpoint`", model.Checkpoint),
    ("`submission.targets[]`", model.Target),
    ("`environment`", model.Environment),
    ("`efficiency.<name>`", model.EfficiencyFigure),
    ("`suites[]`", model.SuiteRecord),
    ("`suites[].samples[]`", model.Sample),
    ("`metrics[]`", model.MetricRecord),
    ("`metrics[].ci`, `delta_ci`, `margin_ci`", model.Interval),
]


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def type_name(t) -> str:
    """A field's type as the document says it: JSON names, ``|`` for alternatives, a model by
    its section."""
    titles = {cls: title for title, cls in SECTIONS}
    if t is typing.Any:
        return "any"
    if t is type(None):
        return "null"
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        names = []
        args = typing.get_args(t)
        for a in [a for a in args if not (a is int and float in args)]:  # a JSON number is either
            n = type_name(a)
            if n not in names:
                names.append(n)
        return " \\| ".join(names)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' for a in typing.get_args(t))
    if origin is list:
        return f"list of {type_name(typing.get_args(t)[0])}"
    if origin is dict:
        return f"object of {type_name(typing.get_args(t)[1])}" if typing.get_args(t)[1] is not typing.Any else "object"
    if inspect.isclass(t) and issubclass(t, model.Record):
        return f"[object](#{_anchor(titles[t])})" if t in titles else "object"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(t, getattr(t, "__name__", str(t)))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _doc(cls) -> str:
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split())


def render() -> str:
    lines = [
        f"# Results JSON, schema version {model.SCHEMA_VERSION}",
        "",
        f"<!-- Generated from harness/results/model.py by `{COMMAND}`: do not edit by hand. -->",
        "",
        "Every writer (the evaluator, the pytest plugin) and every reader (`unlearn compare`, `summary`, `regress`, the",
        "leaderboard) goes through the one model in `harness/results/model.py`. Reading is strict (a string is not a",
        "number); fields a reader does not know are kept, and a file loaded and written again is the same file, key for",
        "key. Fields marked *optional* may be absent (older files have fewer fields); *required* ones are in every file.",
        "",
    ]
    for title, cls in SECTIONS:
        lines += [f"## {title}", "", _doc(cls), "", "| field | type | when reading | meaning |", "| --- | --- | --- | --- |"]
        for name, f in cls.model_fields.items():
            what = _cell(f.description or (_doc(f.annotation) if inspect.isclass(f.annotation) else ""))
            lines.append(f"| `{name}` | {type_name(f.annotation)} | {'required' if f.is_required() else 'optional'} | {what} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC}: not current; regenerate it with `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
