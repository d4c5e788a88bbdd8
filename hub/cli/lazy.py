"""A command's function named by where it lives, imported only when that command runs:
`outpost-hub tasks list` need not load the hub daemon, its store and its web server to
parse its arguments (the whole tree took ~0.5 s to import before each command)."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """`module:function`, called with the parsed arguments; returns the exit status."""

    target: str

    def __call__(self, args: argparse.Namespace) -> int:
        module, function = self.target.split(":")
        return int(getattr(importlib.import_module(module), function)(args))


def command(target: str) -> Command:
    return Command(target)
