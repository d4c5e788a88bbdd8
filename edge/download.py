"""One file of known size, fetched over HTTPS into a partial file that survives a lost
connection: the next attempt asks only for the rest (`Range: bytes=N-`).

The caller owns retries and the check of the content: this module only promises that
the partial file never grows beyond `size` and that it holds `size` bytes when `fetch`
returns. Writes go to a thread, one chunk at a time, so the event loop never waits on
the disk.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import ssl
from pathlib import Path
from typing import BinaryIO

import aiohttp

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# No total limit: a large model on a slow link may take hours. A link that stalls for a
# minute is given up, and the next attempt resumes where this one stopped.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
# Answers that say "later", not "never".
RETRY_STATUSES = frozenset({408, 425, 429})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(Exception):
    """The attempt failed in a way a later attempt can overcome (network, 5xx, 429)."""


class DiskFull(Exception):
    """The device's own disk refused the file (full, over quota, read-only): asking the
    server again does not help until someone makes room."""


# The local file's errors that no retry overcomes by itself.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class DownloadRefused(Exception):
    """The server will not give the file (a 4xx such as 403 or 404): do not ask again."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status


class WrongSize(Exception):
    """The server's file is not the size the caller expects: not the file it wants."""


async def fetch(url: str, part: Path, size: int, context: ssl.SSLContext) -> bool:
    """Complete `part` to `size` bytes from `url`; return whether an earlier partial was
    kept (the file was assembled from more than one response).

    Raises `DownloadError` (retry later), `DownloadRefused` or `WrongSize`.
    """
    have = await asyncio.to_thread(_prepare, part, size)
    if have == size:
        return True
    # Identity: byte ranges and the size check must count the file's own bytes.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(url, headers=headers, ssl=context, allow_redirects=False) as response,
        ):
            start = await _start(response, part, have, size)
            await _receive(response, part, start, size)
            return start > 0
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS:
            raise DiskFull(f"{part.parent}: {exc.strerror or exc}") from exc
        got = await asyncio.to_thread(_size_of, part)
        raise DownloadError(f"{type(exc).__name__}: {exc} (have {got} of {size} bytes)") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        got = await asyncio.to_thread(_size_of, part)
        raise DownloadError(f"{type(exc).__name__}: {exc} (have {got} of {size} bytes)") from exc


async def _start(response: aiohttp.ClientResponse, part: Path, have: int, size: int) -> int:
    """The offset the response's body starts at, or why it cannot be used."""
    status = response.status
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != have:
            # Not the range asked for: throw the partial away rather than guess.
            await asyncio.to_thread(_discard, part)
            raise DownloadError(
                f"asked for bytes {have}-, the server sent "
                f"{response.headers.get('Content-Range', 'no Content-Range')}"
            )
        if match[3] != "*" and int(match[3]) != size:
            raise WrongSize(f"the server's file is {match[3]} bytes, expected {size}")
        return have
    if status == 200:
        length = response.content_length
        if length is not None and length != size:
            raise WrongSize(f"the server's file is {length} bytes, expected {size}")
        if have:
            logger.info("%s: the server ignored the range; starting over", response.url)
        return 0
    if status == 416:
        # The partial is longer than the server's file: it is not that file's start.
        await asyncio.to_thread(_discard, part)
        raise DownloadError(f"HTTP 416: the server has fewer than {have} bytes")
    if status >= 500 or status in RETRY_STATUSES:
        raise DownloadError(f"HTTP {status} {response.reason or ''}".rstrip())
    raise DownloadRefused(status, await _error_message(response))


async def _receive(response: aiohttp.ClientResponse, part: Path, start: int, size: int) -> None:
    """Write the body from `start` on, never past `size` bytes."""
    file = await asyncio.to_thread(_open_at, part, start)
    offset = start
    try:
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            # A server that sends more than expected is not sending the expected file;
            # what fits is kept, and the caller's sha256 check decides.
            piece = chunk[: size - offset]
            await asyncio.to_thread(file.write, piece)
            offset += len(piece)
            if offset >= size:
                break
    finally:
        await asyncio.to_thread(file.close)
    if offset < size:
        raise DownloadError(f"the response ended after {offset} of {size} bytes")


async def _error_message(response: aiohttp.ClientResponse) -> str:
    """The hub's `{"error": {"message": ...}}`, or the start of whatever it sent."""
    try:
        body = await response.json(content_type=None)
        message = body["error"]["message"]
        if isinstance(message, str):
            return message[:300]
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        pass
    return response.reason or ""


def _prepare(part: Path, size: int) -> int:
    """Bytes already held, after dropping a partial that is longer than the file."""
    part.parent.mkdir(parents=True, exist_ok=True)
    have = _size_of(part)
    if have > size:
        _discard(part)
        return 0
    return have


def _open_at(part: Path, offset: int) -> BinaryIO:
    file = part.open("r+b" if part.exists() else "wb")
    file.seek(offset)
    file.truncate()
    return file


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)


def _size_of(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0
