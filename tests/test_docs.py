"""The documents stay true to the code, in the cheap sense: every `unlearn ...` and `pytest
--unlearn-...` line in a fenced code block (and every inline code span that starts with one) of
README.md, ARCHITECTURE.md, CONTRIBUTING.md, benchmarks/RESULTS.md and docs/*.md names a
subcommand and options that exist (checked against the real argparse parser of
`harness.cli.main` and the options `harness.plugin.hooks` registers), every relative link points to a file
that exists (and a `#anchor` to a heading of it), and README.md stays a landing page."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.plugin import hooks as plugin

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "RESULTS.md",
               *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 220

FENCE = re.compile(r"^\s*```")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
INLINE = re.compile(r"(?<!`)`((?:[A-Z_][A-Z0-9_]*=\S* )*(?:unlearn|pytest) [^`]+)`(?!`)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def code_lines(text: str, inline: bool = False) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a fenced code block; with ``inline``, also every
    inline code span of the prose that starts with `unlearn ` or `pytest `."""
    out, inside = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if inside:
            out.append((n, line))
        elif inline:
            out.extend((n, m.group(1)) for m in INLINE.finditer(line))
    return out


def command(line: str) -> list[str] | None:
    """The words of a shell line that runs `unlearn` or `pytest`, without leading VAR=value
    assignments and `time`, up to a comment; None for any other line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in prose-like code: split plainly
        words = line.split("#", 1)[0].split()
    while words and (ENV.match(words[0]) or words[0] == "time"):
        words = words[1:]
    if words[:3] == ["python", "-m", "pytest"]:
        words = words[2:]
    return words if words and words[0] in ("unlearn", "pytest") else None


def option_names(words: list[str]) -> list[str]:
    """`--name` of every option word (`[--suite`, `--x=1`, `--preset paper|toy]` -> the name)."""
    names = []
    for w in words:
        w = w.strip("[]()")
        if w.startswith("--") and len(w) > 2:
            names.append(w.split("=", 1)[0].rstrip("],"))
    return names


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options_of(p: argparse.ArgumentParser) -> set[str]:
    return {s for action in p._actions for s in action.option_strings}


def plugin_options() -> set[str]:
    """The options `harness.plugin.hooks.pytest_addoption` registers."""
    names: set[str] = set()

    class Group:
        def addoption(self, *opts, **kw):
            names.update(opts)

    class Parser:
        def getgroup(self, *a, **kw):
            return Group()

        def addoption(self, *opts, **kw):
            names.update(opts)

        def addini(self, *a, **kw):
            pass

    plugin.pytest_addoption(Parser())
    return names


def check_unlearn(words: list[str], top: argparse.ArgumentParser) -> str | None:
    """None if `unlearn WORDS...` names a subcommand (and sub-subcommand) and options that exist."""
    p, path = top, ["unlearn"]
    rest = words[1:]
    while (subs := subparsers(p)):
        if rest and (rest[0] in ("--help", "-h") or rest[0].isupper()):  # `unlearn --help`, `unlearn COMMAND --help`
            return None
        if not rest or rest[0] not in subs:
            return f"{' '.join(path)}: {rest[0] if rest else '(nothing)'!r} is not a subcommand ({', '.join(sorted(subs))})"
        path.append(rest[0])
        p, rest = subs[rest[0]], rest[1:]
    unknown = [o for o in option_names(rest) if o not in options_of(p) | {"--help"}]
    if unknown:
        return f"{' '.join(path)}: no option {', '.join(unknown)}"
    return None


def check_pytest(words: list[str], known: set[str]) -> str | None:
    unknown = [o for o in option_names(words) if o.startswith("--unlearn") and o not in known]
    return f"pytest: no option {', '.join(unknown)}" if unknown else None


def problems_in(path: Path, text: str, top: argparse.ArgumentParser, known: set[str]) -> list[str]:
    out = []
    for n, line in code_lines(text, inline=True):
        words = command(line)
        if words is None:
            continue
        why = check_unlearn(words, top) if words[0] == "unlearn" else check_pytest(words, known)
        if why:
            out.append(f"{path.relative_to(ROOT)}:{n}: {why}: {line.strip()}")
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        if inside or not (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            continue
        s = slug(m.group(1))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def link_problems(path: Path, text: str) -> list[str]:
    out = []
    prose = "\n".join(line if not FENCE.match(line) else "" for line in text.splitlines())
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    for m in LINK.finditer(prose):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(ROOT)}: link {target}"
        if not dest.exists():
            out.append(f"{where}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            out.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return out


@pytest.fixture(scope="module")
def top():
    return cli.parser()


@pytest.fixture(scope="module")
def known():
    return plugin_options()


def test_the_documents_exist():
    assert (ROOT / "docs" / "usage.md").is_file() and len(DOCS) > 10


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_a_code_block_exists(path, top, known):
    problems = problems_in(path, path.read_text(), top, known)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(path):
    problems = link_problems(path, path.read_text())
    assert not problems, "\n".join(problems)


def test_readme_is_a_landing_page():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move the manual into docs/"


def test_the_docs_commands_are_found_at_all(top, known):
    """The checks look at something: README's cheat-sheet holds unlearn and pytest lines."""
    text = (ROOT / "README.md").read_text()
    words = [w for _, line in code_lines(text) if (w := command(line))]
    assert sum(w[0] == "unlearn" for w in words) >= 10 and sum(w[0] == "pytest" for w in words) >= 3
    assert "--unlearn-submission" in known and "--unlearn-strict" in known and "leaderboard" in subparsers(top)


@pytest.mark.parametrize("line, why", [
    ("unlearn frobnicate x.yaml", "is not a subcommand"),
    ("unlearn leaderboard rebuild", "is not a subcommand"),
    ("unlearn check s.yaml --no-such-flag", "no option --no-such-flag"),
    ("HF_HUB_OFFLINE=1 pytest --unlearn-submission s.yaml --unlearn-nope", "no option --unlearn-nope"),
])
def test_a_broken_line_is_caught(top, known, line, why):
    doc = ROOT / "docs" / "_broken_example.md"  # never written: the text is checked as if it were there
    problems = problems_in(doc, f"# x\n\n```bash\n{line}\n```\n", top, known)
    assert len(problems) == 1 and why in problems[0] and ":4:" in problems[0]
    problems = problems_in(doc, f"# x\n\nRun `{line}` to see.\n", top, known)  # an inline code span
    assert len(problems) == 1 and why in problems[0] and ":3:" in problems[0]


def test_a_good_line_passes(top, known):
    doc = ROOT / "docs" / "_example.md"
    text = ("```bash\nunlearn erase uce --base DIR --concept striped --out DIR  # --not-an-option in a comment\n"
            "unlearn --help\nunlearn leaderboard build --results R --out site/\nmake demo\n```\n`unlearn COMMAND --help`\n")
    assert problems_in(doc, text, top, known) == []


def test_a_broken_link_is_caught():
    path = ROOT / "README.md"
    assert link_problems(path, "[a](docs/no-such-page.md) [b](docs/usage.md#no-such-heading) [c](https://x.org/y)") == [
        "README.md: link docs/no-such-page.md: docs/no-such-page.md does not exist",
        "README.md: link docs/usage.md#no-such-heading: no heading #no-such-heading in docs/usage.md"]
    assert link_problems(path, "[a](docs/usage.md#commands) [b](#using-it)") == []
