"""Database URLs as the settings and commands take them: a SQLite path (or sqlite:PATH) or
postgresql://...; read without loading the store (hub/store/engine.py opens them)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote


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
    if "@" not in netloc and "@" in path:
        # A '/' written unescaped in the password ends the netloc early: what stands
        # before the last '@' may be the password, so none of it is shown.
        netloc, slash, path = rest.rpartition("@")[2].partition("/")
        user = ""
    else:
        userinfo, _, netloc = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
    hosts = netloc.partition("?")[0]  # a query may hold password=
    shown_path = (slash + path).partition("?")[0]
    return f"{scheme}://{user + '@' if user else ''}{hosts or 'local socket'}{shown_path}"


def port_problem(url: str) -> str | None:
    """What is wrong with a port in a postgresql:// URL's hosts, or None. libpq hands a
    port that is not a number to the resolver, which answers "Servname not supported for
    ai_socktype"; this names the port instead, unless it may be part of the password."""
    hosts, after = _libpq_hosts(url)
    for host in hosts.split(","):  # libpq's failover form: host:port,host:port
        if host.startswith("["):  # [IPv6]:port
            name, _, behind = host.partition("]")
            name, port = name + "]", behind.removeprefix(":")
        else:
            name, _, port = host.partition(":")  # libpq: the first ':' ends the name
        port = unquote(port)  # libpq decodes %-escapes in a port too
        if port and not (port.isascii() and port.isdigit()):
            if "@" in hosts + after:
                # An '@' or '/' unescaped in the password makes libpq read part of it as
                # a host and port; whatever stands before the URL's last '@' may be the
                # password, so nothing of the URL is quoted.
                return (
                    "a port of its hosts is not a number as libpq reads the URL; "
                    "write an '@', '/' or '%' in the password as %40, %2F or %25 "
                    "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
                )
            shown = port if len(port) <= 20 else port[:20] + "..."
            return (
                f"the port {shown!r} of host {name!r} is not a number "
                "(write postgresql://USER@HOST:PORT/DATABASE)"
            )
    return None


def _libpq_hosts(url: str) -> tuple[str, str]:
    """A postgresql:// URL's host list (host:port,host:port) and what follows it, as
    libpq's URI parser cuts them. Its user and password end at the first '@' that comes
    before any '/', whatever they hold ('?', '#', ':' included), and its hosts at the
    next '/' or '?'; cut otherwise (at '?' first, say), a valid URL is refused and part
    of its password shown as a host or port."""
    rest = url.partition("://")[2]
    if "@" in rest.partition("/")[0]:
        rest = rest.partition("@")[2]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    return rest[:end], rest[end:]


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
