"""Commands that act on a running hub through its HTTPS API, as any client would: where the
hub is, how to trust it and who is asking, and one call at a time with the API's own error
messages.

Where: `--hub URL` (or OUTPOST_HUB), else the hub_url of `--data DIR` on the hub machine.
Trust: `--ca FILE` (or OUTPOST_CA), else the data folder's fleet CA, else the system's.
Who: `--token-file FILE` (or OUTPOST_TOKEN_FILE), else, with `--data`, a ten-minute admin
session minted from the data folder's token key for `cli:<OS user>` (recorded like any
token, so the audit log names who acted).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hub.cli.datafolder import check_initialised, load_config, open_store
from hub.paths import HubPaths

CLI_SESSION_S = 600.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)


class RemoteError(Exception):
    """A remote command failed; the message says why (the API's own words when it
    answered), and `status` is its HTTP status (0: it did not answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class RemoteUsageError(RemoteError):
    """The command was called wrong: a flag, or a file it names (which hub, its URL, the
    CA, the token file). It exits 2, as any command-line mistake does; a hub that cannot
    be reached or refuses exits 1."""


@dataclass(frozen=True)
class Endpoint:
    """A hub's API and the credentials to call it."""

    url: str
    ssl: ssl.SSLContext
    token: str


def endpoint(args: argparse.Namespace) -> Endpoint:
    """Where the hub is and how to call it, from the flags, the environment and the data
    folder; RemoteUsageError saying what is missing or wrong."""
    data: Path | None = args.data
    if data is not None:
        check_initialised(data)
    url = args.hub or os.environ.get("OUTPOST_HUB")
    if not url and data is not None:
        url = load_config(data).hub_url
    if not url:
        raise RemoteUsageError(
            "which hub? give --hub https://HOST:PORT, or --data on the hub machine"
        )
    _check_url(url)
    return Endpoint(url.rstrip("/"), _trust(args.ca, data), _token(args.token_file, data))


def _check_url(url: str) -> None:
    """Refuse a hub URL that could not be called, naming what is wrong with it (else the
    call fails with what the HTTP client makes of it)."""
    if not url.startswith("https://"):
        raise RemoteUsageError(f"--hub must be an https:// URL, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read for its check: a port out of range raises
    except ValueError as exc:
        raise RemoteUsageError(f"--hub {url!r} is not a URL: {exc}") from exc
    if any(c.isspace() for c in url):
        raise RemoteUsageError(f"--hub {url!r} holds a space: give https://HOST:PORT")
    if not parts.hostname:
        raise RemoteUsageError(f"--hub {url!r} names no host: give https://HOST:PORT")
    if parts.query or parts.fragment:
        raise RemoteUsageError(f"--hub {url!r}: give https://HOST:PORT, without ? or #")


def _trust(ca: Path | None, data: Path | None) -> ssl.SSLContext:
    ca = ca or (Path(os.environ["OUTPOST_CA"]) if os.environ.get("OUTPOST_CA") else None)
    if ca is None and data is not None:
        ca = HubPaths(data).ca_cert
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise RemoteUsageError(f"cannot use {ca} as the CA certificate: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _token(token_file: Path | None, data: Path | None) -> str:
    if token_file is None and os.environ.get("OUTPOST_TOKEN_FILE"):
        token_file = Path(os.environ["OUTPOST_TOKEN_FILE"])
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise RemoteUsageError(f"cannot read the token file {token_file}: {exc}") from exc
        if not token:
            raise RemoteUsageError(f"the token file {token_file} is empty")
        if not _TOKEN.fullmatch(token):
            raise RemoteUsageError(
                f"the token file {token_file} holds no API token (one line of three base64url "
                "parts joined by dots, as `outpost-hub token create` prints it)"
            )
        return token
    if data is None:
        raise RemoteUsageError(
            "who is asking? give --token-file FILE (a token from `outpost-hub token create`), "
            "or --data on the hub machine"
        )
    from hub.access import apitokens  # here: the token machinery only for a session
    from hub.fleet.enrollment import load_token_key

    paths = HubPaths(data)
    token, principal = apitokens.mint(
        load_token_key(paths),
        role="admin",
        subject=f"cli:{getpass.getuser()}",
        ttl=CLI_SESSION_S,
        kind="session",
    )
    with open_store(paths) as store:
        store.add_api_token_sync(apitokens.grant_record(principal))
    return token


class Client:
    """Calls to one hub's API within one command."""

    def __init__(self, session: aiohttp.ClientSession, hub: Endpoint) -> None:
        self._session = session
        self._hub = hub

    @property
    def url(self) -> str:
        return self._hub.url

    async def get(self, path: str, **query: str | list[str]) -> Any:
        return await self.call("GET", path, query=query)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        form: aiohttp.FormData | None = None,
        query: dict[str, str | list[str]] | None = None,
    ) -> Any:
        """The decoded JSON answer; RemoteError with the API's message on an error."""
        params = [
            (k, item)
            for k, v in (query or {}).items()
            for item in ([v] if isinstance(v, str) else v)
        ]
        try:
            async with self._session.request(
                method,
                self._hub.url + path,
                json=body,
                data=form,
                params=params,
                headers={"Authorization": f"Bearer {self._hub.token}"},
                ssl=self._hub.ssl,
            ) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise RemoteError(
                f"the hub at {self._hub.url} presents a certificate this CA does not vouch "
                f"for ({exc.certificate_error}): give its fleet CA with --ca"
            ) from exc
        except aiohttp.ClientConnectorError as exc:  # its text shows the SSL context's repr
            raise RemoteError(
                f"cannot reach the hub at {self._hub.url}: {connect_failure(exc)}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RemoteError(
                f"cannot reach the hub at {self._hub.url}: {str(exc) or type(exc).__name__}"
            ) from exc
        try:
            answer = json.loads(text) if text else None
        except json.JSONDecodeError:
            answer = text
        if status >= 400:
            raise RemoteError(_error_message(answer, status), status)
        return answer

    async def pages(self, path: str, **query: str | list[str]) -> list[Any]:
        """Every row of a paginated list, a page at a time."""
        rows: list[Any] = []
        cursor: str | None = None
        while True:
            page = await self.get(path, **query, **({"cursor": cursor} if cursor else {}))
            rows.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return rows

    async def device_names(self) -> dict[str, str]:
        """Every device's name by id, for tables that show a device."""
        devices = await self.pages("/api/v1/devices", limit="500")
        return {d["id"]: d.get("name") or d["id"] for d in devices}


def connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection was not made, in words: the OS's for an errno ("Connection
    refused", not asyncio's "Connect call failed ('127.0.0.1', 1)"), the resolver's for a
    name (whose negative errno os.strerror calls "Unknown error -2"), OpenSSL's for a
    handshake (its errno 1 is no EPERM)."""
    error = exc.os_error
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the name {exc.host!r} ({error.strerror or error})"
    if error.errno and not isinstance(error, ssl.SSLError):  # an SSL errno is no OS errno
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


def _error_message(answer: Any, status: int) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        named = (error.get("details") or {}).get("field")
        field = f" ({named})" if named and named not in str(error.get("message")) else ""
        return f"{error.get('message', 'refused')}{field} [HTTP {status}]"
    return f"the hub answered HTTP {status}: {str(answer)[:200]}"


def run(args: argparse.Namespace, command: Callable[[Client], Awaitable[int]]) -> int:
    """Run a remote command: connect, call, and map failures to a message and exit 1."""
    hub = endpoint(args)

    async def go() -> int:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            return await command(Client(session, hub))

    return asyncio.run(go())


def show_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
