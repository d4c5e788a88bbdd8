"""The folders a model install copies into before a version gets its real name, and the
clean-up of those a killed install left.

An install copies into `models/<name>/.{version}.XXXXXXXX.partial`, a name of its own (two
installs at once must not share one), then renames it into place. A `kill -9`, an OOM
kill or a power cut mid-copy leaves that folder, near model-sized, under a random name no
later install reuses. So each install holds an `flock` on its folder while it copies:
such a lock lasts exactly as long as the process (whatever kills it), so a folder whose
lock can be taken has nobody copying into it any more, and goes. Neither a pid nor an
age would do: `outpost-agent models install` runs beside the agent without the data
folder's lock (outpost/datalock.py), and a copy to a slow SD card can take minutes.

A version folder renamed aside to be deleted (`.{version}.removing`) that a crash left
goes too: nothing else ever deletes it, as its version is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_SUFFIX = ".partial"
REMOVING_SUFFIX = ".removing"


@contextlib.contextmanager
def staging(home: Path, version: str) -> Iterator[Path]:
    """A new empty folder in `home`, locked for this install; gone on leaving unless it
    was renamed into place (a full disk: the half copy must not keep it full)."""
    path, fd = _claim(home, version)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)  # only now: a sweep must not take a folder still being removed


def sweep(home: Path) -> list[str]:
    """Remove the staging folders no install holds and the leftovers of removals from
    `home` (blocking); return their names."""
    try:
        children = sorted(home.iterdir())
    except OSError:  # no model folder (yet): nothing left in it
        return []
    gone = []
    for path in children:
        if not path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        if path.name.endswith(REMOVING_SUFFIX):
            # Two removals of it at once (a `remove` of the same version) both ignore
            # what the other deleted first.
            shutil.rmtree(path, ignore_errors=True)
        elif not (path.name.endswith(STAGING_SUFFIX) and _remove_if_abandoned(path)):
            continue
        logger.warning("removed %s, left by an install or removal that did not finish", path)
        gone.append(path.name)
    return gone


def _claim(home: Path, version: str) -> tuple[Path, int]:
    """A new staging folder and the open descriptor that holds its lock."""
    while True:
        path = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=STAGING_SUFFIX, dir=home))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # a sweep took it before it was locked: another name
        # Waits only while a sweep that locked it first removes it (then it is gone).
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _names(path, fd):
            path.chmod(0o755)  # as mkdir makes it (mkdtemp gives 0700)
            return path, fd
        os.close(fd)


def _remove_if_abandoned(path: Path) -> bool:
    """Remove a staging folder if no install holds its lock; whether it did."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False  # renamed into place or removed meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: an install copies into it now
            return False
        # Still the folder found: once renamed into place, its name is another's.
        if not _names(path, fd):
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the folder open as `fd`."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)
