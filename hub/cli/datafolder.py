"""The data folder a command acts on: refused unless a hub was initialised in it, its
settings, and its store opened for the command's length."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.config import SECTION, HubConfig
from hub.paths import HubPaths
from outpost import settings

if TYPE_CHECKING:
    from hub.store import HubStore


def check_initialised(data: Path) -> None:
    """Refuse a folder that is not an initialised hub's (a typo, say) by name, rather
    than create or read it as empty: only `init` makes one."""
    if data.exists() and not data.is_dir():
        raise FileNotFoundError(f"{data} is a file, not a hub data folder: check --data")
    if not data.is_dir():
        raise FileNotFoundError(f"{data} does not exist: check --data, or run `outpost-hub init`")
    if not HubPaths(data).ca_key.exists():
        raise FileNotFoundError(f"{data} is not a hub data folder: run `outpost-hub init`")


def load_config(
    data: Path, config: Path | None = None, overrides: dict[str, Any] | None = None
) -> HubConfig:
    """Load the hub's settings: file (explicit, or hub.toml in the data folder), then flags."""
    if config is None and HubPaths(data).config.exists():
        config = HubPaths(data).config
    return settings.load_file(HubConfig, config, SECTION, overrides or {})


@contextlib.contextmanager
def open_store(paths: HubPaths, config: HubConfig | None = None) -> Iterator[HubStore]:
    """Open the folder's store for the length of one command."""
    if not paths.ca_key.exists():
        raise FileNotFoundError(f"{paths.root} is not a hub data folder: run `outpost-hub init`")
    from hub.store import HubStore  # here: most commands never open it

    config = config or load_config(paths.root)
    store = HubStore(config.database(paths.database))
    if config.sinks:  # a command's changes reach the sinks as the running hub's do
        store.publish_events()
    try:
        yield store
    finally:
        store.close()
