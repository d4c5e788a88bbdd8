"""Database URLs as the settings and commands take them: a SQLite path (or sqlite:PATH) or
postgresql://...; read without loading the store (hub/store/engine.py opens them)."""

from __future__ import annotations

from pathlib import Path


class DatabaseUrlError(ValueError):
    """A database the hub cannot use (a wrong URL, a server that refused); says why."""


def is_postgres(url: str) -> bool:
    scheme, found, _ = url.partition("://")
    return bool(found) and scheme in ("postgresql", "postgres")


def describe(url: str | Path) -> str:
    """The database for a log line or an error: a URL without its password or options."""
    if isinstance(url, Path) or "://" not in url:
        return str(url)
    # Taken apart by hand: urlsplit raises for libpq's failover form (host:port,host:port)
    # and a broken [IPv6] host, and this must name any URL it is given, password left out.
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    shown_path = (slash + path).partition("?")[0]
    return f"{scheme}://{user + '@' if user else ''}{hosts or 'local socket'}{shown_path}"


def port_problem(url: str) -> str | None:
    """What is wrong with a port in a postgresql:// URL's hosts, or None. libpq hands a
    port that is not a number to the resolver, which answers "Servname not supported for
    ai_socktype"; this names the port instead."""
    rest = url.partition("://")[2]
    hosts = rest.partition("/")[0].partition("?")[0].rpartition("@")[2]
    for host in hosts.split(","):  # libpq's failover form: host:port,host:port
        if host.startswith("["):  # [IPv6]:port
            name, _, after = host.partition("]")
            name, port = name + "]", after.removeprefix(":")
        else:
            name, colon, port = host.rpartition(":")
            port = port if colon else ""
        if port and not (port.isascii() and port.isdigit()):
            shown = port if len(port) <= 20 else port[:20] + "..."
            return (
                f"the port {shown!r} of host {name!r} is not a number "
                "(write postgresql://USER@HOST:PORT/DATABASE)"
            )
    return None


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
