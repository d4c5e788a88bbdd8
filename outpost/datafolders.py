"""The hub's and the agent's data folders as the command lines take them: `--data` is
never empty, and neither tool makes its folder in the other's.

An empty `--data ""` (a variable a script forgot to set) would otherwise be the
current folder, and an agent enrolled into a hub's folder (or a hub initialised in an
agent's) mixes two tools' keys and databases in one place, where the next command of
either reads the other's files. Each tool knows the other's folder by one file only the
other makes, so neither package imports the other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

HUB_MARK: Final = Path("pki") / "ca.key"  # only `outpost-hub init` makes it
AGENT_MARK: Final = Path("identity") / "identity.json"  # only `outpost-agent enroll` does


def argument(text: str) -> Path:
    """argparse's `type` for `--data`: a path, refused when empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give the data folder")
    return Path(text)


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
