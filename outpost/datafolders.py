"""The hub's and the agent's data folders (and other paths and values) as the command
lines take them: `--data` is never empty, and neither tool makes its folder in the
other's.

An empty `--data ""` (a variable a script forgot to set) would otherwise be the
current folder, as would any other empty path option (`--out ""` writes keys into it);
an empty URL, id or host would be taken for "not given" and quietly replaced by a
default (another database, a single hub, every interface). `path` and `text` refuse
them where argparse reads them, so the error names the option.

An agent enrolled into a hub's folder (or a hub initialised in an agent's) mixes two
tools' keys and databases in one place, where the next command of either reads the
other's files. Each tool knows the other's folder by one file only the other makes, so
neither package imports the other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Final

HUB_MARK: Final = Path("pki") / "ca.key"  # only `outpost-hub init` makes it
AGENT_MARK: Final = Path("identity") / "identity.json"  # only `outpost-agent enroll` does


def path(what: str) -> Callable[[str], Path]:
    """argparse's `type` for a path option: a path, refused when empty or blank, the
    message saying what to give (`what`: "the data folder")."""

    def parse(given: str) -> Path:
        if not given.strip():
            raise argparse.ArgumentTypeError(f"an empty path: give {what}")
        return Path(given)

    return parse


def text(what: str) -> Callable[[str], str]:
    """argparse's `type` for a URL, id, name or host: the text, refused when empty or
    blank (never read as "not given"), the message saying what to give."""

    def parse(given: str) -> str:
        if not given.strip():
            raise argparse.ArgumentTypeError(f"an empty value: give {what}")
        return given

    return parse


argument = path("the data folder")  # `--data`, for both tools


def hub_folder_problem(data: Path) -> str | None:
    """Why the hub must not make its folder at `data` (an agent's), or None."""
    if (data / AGENT_MARK).exists():
        return (
            f"{data} is an agent's data folder (it holds {AGENT_MARK}): give the hub "
            "a folder of its own"
        )
    return None


def agent_folder_problem(data: Path) -> str | None:
    """Why an agent must not enroll into `data` (a hub's folder), or None."""
    if (data / HUB_MARK).exists():
        return (
            f"{data} is a hub's data folder (it holds {HUB_MARK}): give the agent "
            "a folder of its own"
        )
    return None
