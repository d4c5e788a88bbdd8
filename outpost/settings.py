"""Read a TOML settings file into a typed dataclass, with command-line overrides."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from outpost import schema

T = TypeVar("T")


class SettingsError(ValueError):
    """A settings file is missing, unreadable or wrong; the message names file and key."""


def load_file(cls: type[T], path: Path | None, section: str, overrides: Mapping[str, Any]) -> T:
    """Load `[section]` of `path` (if given) into `cls`; non-None `overrides` win."""
    table: dict[str, Any] = {}
    where = section
    if path is not None:
        where = f"{path}: {section}"
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SettingsError(f"settings file not found: {path}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        unknown = sorted(set(document) - {section})
        if unknown:
            raise SettingsError(f"{path}: unknown table [{unknown[0]}] (expected [{section}])")
        found = document.get(section, {})
        if not isinstance(found, dict):
            raise SettingsError(f"{path}: [{section}] must be a table, got {type(found).__name__}")
        table = dict(found)
    table.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return schema.load(cls, table, where)
    except schema.SchemaError as exc:
        raise SettingsError(str(exc)) from exc


def parse_broker_url(url: str, where: str) -> tuple[str, int]:
    """Return (host, port) of an mqtts:// URL or raise `SchemaError` naming `where`."""
    parsed = urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "mqtts" or not parsed.hostname or not port:
        raise schema.SchemaError(where, f"expected mqtts://HOST:PORT, got {url!r}")
    return parsed.hostname, port


LOG_LEVELS = ("debug", "info", "warning", "error")


def check_log_level(level: str, where: str) -> None:
    """Raise `SchemaError` naming `where` unless `level` is a known log level."""
    if level.lower() not in LOG_LEVELS:
        raise schema.SchemaError(where, f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
