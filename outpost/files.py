"""Write files so that a crash leaves either the old content or the new, never half."""

from __future__ import annotations

import os
import threading
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644

# Writers of one path in this process take turns. They share one temporary name, kept
# fixed so that the next write finds and removes what a crash left; two at once would
# unlink or rename each other's half-written file (a hub replica caching one model for
# two downloads). Other processes are kept out of a data folder by its lock (datalock.py),
# or, where a command runs beside the daemon, take turns of their own (a model's `active`
# file: edge/inference/directory.py).
# Locks by stripe, not one per path: a process writing new paths for years (parts,
# exports) keeps no lock per path; two paths on one stripe merely wait a write's time.
_TURNS = tuple(threading.Lock() for _ in range(64))


def write_new(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """Create `path` with `mode` and `data`; refuse if it exists already.

    Written under a temporary name and linked into place whole: a full disk or a power
    cut mid-write leaves no short file at `path` (a short key would be read as a key).
    The mode is set at creation (no window in which a key is readable by others).
    """
    with _turn(path):
        tmp = _temporary(path)
        try:
            _write_synced(tmp, data, mode)
            os.link(tmp, path)  # atomic, and fails if `path` exists
        finally:
            tmp.unlink(missing_ok=True)
    sync_dir(path.parent)


def replace(path: Path, data: bytes, mode: int = PUBLIC) -> None:
    """Atomically replace (or create) `path` with `data`."""
    with _turn(path):
        tmp = _temporary(path)
        try:
            _write_synced(tmp, data, mode)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    sync_dir(path.parent)


def _turn(path: Path) -> threading.Lock:
    return _TURNS[hash(os.path.abspath(path)) % len(_TURNS)]


def _temporary(path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash: only ever ours (we hold the path's turn)
    return tmp


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; make it exactly `mode`
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """Flush a folder's files and the folder itself to disk (before renaming it into
    place: a power cut must not leave a complete name over empty files)."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    sync_dir(folder)


def sync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename or a new link in it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
