"""Database URLs as the settings and commands take them: a SQLite path (or sqlite:PATH) or
postgresql://...; read without loading the store (hub/store/engine.py opens them)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit


class DatabaseUrlError(ValueError):
    """A database the hub cannot use (a wrong URL, a server that refused); says why."""


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in ("postgresql", "postgres")


def describe(url: str | Path) -> str:
    """The database for a log line or an error: a URL without its password or options."""
    if isinstance(url, Path) or "://" not in url:
        return str(url)
    parts = urlsplit(url)
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def sqlite_path(url: str | Path) -> Path:
    if isinstance(url, Path):
        return url
    if url.startswith("sqlite:"):
        rest = url.removeprefix("sqlite:")
        return Path(rest.removeprefix("//") if rest.startswith("///") else rest)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise DatabaseUrlError(
            f"database URL {describe(url)!r}: unknown scheme {scheme!r} "
            "(use a file path, sqlite:PATH or postgresql://USER@HOST:PORT/DATABASE)"
        )
    return Path(url)
