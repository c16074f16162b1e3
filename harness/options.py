"""Option parsers shared by the pytest plugin (``harness.plugin.hooks``) and the ``unlearn``
command: ``type=`` callables (text -> value). ``typed(flag, parser)`` makes one that reports a bad
value as the one line ``FLAG: problem`` (a ``pytest.UsageError`` in the plugin, an
``OptionError`` in the CLI, which prints it as ``unlearn: error: ...``, exit 2).
"""

from __future__ import annotations

import argparse
import json
import re

from harness.errors import HarnessError

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.-]+:\d+)$")


class OptionError(HarnessError):
    """A bad option value, as the one line ``FLAG: problem`` (not a ValueError: argparse would
    replace the message with its own ``invalid value``)."""


def typed(flag: str, parse, error: type[Exception] = OptionError):
    """``parse`` (text -> value, ValueError for a bad value) as a ``type=`` callable of ``flag``
    whose error is the one line ``FLAG: problem``."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise error(f"{flag}: {e}") from None

    convert.__name__ = parse.__name__  # argparse names the type by it
    return convert


def device(text: str) -> str:
    if not DEVICE.match(text):
        raise ValueError(f"{text!r} is not one of auto, cpu, mps, cuda, cuda:N")
    return text


def executor(text: str) -> str:
    if text not in ("local", "ray"):
        raise ValueError(f"{text!r} is not one of local, ray")
    return text


def ray_address(text: str) -> str:
    if not RAY_ADDRESS.match(text):
        raise ValueError(f"{text!r} is not auto, local, HOST:PORT or ray://HOST:PORT")
    return text


def results_path(text: str) -> str:
    if not text.strip():
        raise ValueError("empty path")
    return text


def positive_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:  # argparse's own words for type=int
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 1:
        raise ValueError(f"{n} is not a positive count")
    return n


def param(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (the value as JSON when it parses, else the text) for ``unlearn erase --param``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v
