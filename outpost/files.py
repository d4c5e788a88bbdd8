"""Write files so that a crash leaves either the old content or the new, never half."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def write_new(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """Create `path` with `mode` and write `data`; refuse if it exists already.

    The mode is set at creation (no window in which a key is readable by others).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; make it exactly `mode`
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def replace(path: Path, data: bytes, mode: int = PUBLIC) -> None:
    """Atomically replace (or create) `path` with `data`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    write_new(tmp, data, mode)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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
    _fsync_dir(folder)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
