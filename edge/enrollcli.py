"""`outpost-agent enroll`: a data folder enrolled with the hub, or, when the enroll fails,
left as it was found: the folders it made and the files it wrote go, unless the hub may
hold the token for the key it made (then the key stays for the retry the message asks
for)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
from pathlib import Path

from edge.enroll import EnrollError, enroll, read_token
from edge.identity import DevicePaths
from edge.profile import find_profile, load_profile
from outpost import datafolders, devicenames
from outpost.datalock import LOCK_NAME, DataLock


class EnrollCliError(RuntimeError):
    """A mistake the user can act on (the message says which), before or around the
    enrollment itself (which raises `EnrollError`)."""


def enroll_folder(args: argparse.Namespace) -> int:
    """`outpost-agent enroll`: enroll the data folder `args.data`, made if need be, and
    undo what a failed enroll made (see `_remove`). `read_token` is the check `enroll`
    makes itself, made here before there is a folder to leave behind."""

    if problem := datafolders.agent_folder_problem(args.data):
        raise EnrollCliError(problem)
    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise EnrollCliError(f"cannot read {args.token_file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise EnrollCliError(f"{args.token_file} holds no token (not text): {exc}") from exc
    if args.name is not None:
        try:
            name = devicenames.check(args.name, "--name")
        except ValueError as exc:
            raise EnrollCliError(str(exc)) from exc
    else:
        name = devicenames.from_hostname(socket.gethostname())
    profile = find_profile(args.profile)
    load_profile(profile)  # a broken one refused by name, as `enroll` would, but first
    read_token(token)
    made = _make_folder(args.data)
    # One enrollment of a folder at a time (and none while its agent runs): two at once
    # would enroll two devices and keep one identity.
    with DataLock.acquire(args.data, "outpost-agent enroll"):
        try:
            identity = asyncio.run(enroll(token, DevicePaths(args.data), profile, name))
        except EnrollError as exc:
            # A failed enroll leaves no folder of its making (a key no hub knows, a lock)
            # behind; one the user had is left as it was. Except when the request may
            # have reached the hub: it then holds the token for this key, and the retry
            # the message asks for works only with the same key. (So too after Ctrl-C or
            # a disk error, which may come after the hub answered: not caught here.)
            if not exc.keep_key:
                _remove(args.data, made)
            raise
    print(f"enrolled as {identity.name} ({identity.device_id}); broker {identity.broker_url}")
    return 0


def _make_folder(data: Path) -> list[Path]:
    """Make the data folder and its missing parents (0700); the folders this made,
    deepest first (none if the data folder was there). Made one level at a time, so a
    folder another process made at the same moment is never taken for this one's."""
    missing = []
    for folder in (data, *data.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    made: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if folder.is_dir():
                continue  # made by another process just now: not this one's to remove
            _remove_folders(made)
            raise EnrollCliError(
                f"{folder} is a file, not a folder: give --data a folder"
            ) from None
        except OSError as exc:
            _remove_folders(made)
            raise EnrollCliError(f"cannot make the data folder {folder}: {exc.strerror}") from exc
        made.insert(0, folder)
    return made


# Open a folder, never through a symlink in its place (O_NOFOLLOW), to remove names in it.
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove(data: Path, made: list[Path]) -> None:
    """Undo a failed enroll into `data`: the files the enroll writes, if this made the
    data folder, then the folders this made while they are empty. Nothing else goes:
    another process may have put its own into a folder this made (a parallel `enroll
    --data fleet/agent2` that found `fleet/` made by this `--data fleet/agent1`)."""
    if data not in made:  # the user's folder: left as it was, with the key for a retry
        return
    paths = DevicePaths(data)
    written = [
        paths.key,
        paths.cert,
        paths.ca_cert,
        paths.hub_signing_pub,
        paths.hub_bundle_pub,
        paths.identity,
    ]
    try:
        root = os.open(data, _FOLDER)
    except OSError:  # gone, or a symlink now: nothing of this enroll's to remove
        return
    try:
        with contextlib.suppress(OSError):
            folder = os.open(paths.identity_dir.name, _FOLDER, dir_fd=root)
            try:
                _unlink(folder, [path.name for path in written])
            finally:
                os.close(folder)
            os.rmdir(paths.identity_dir.name, dir_fd=root)  # only if nothing else is in it
        # The lock file too, while this process still holds it: no other enroll can be
        # waiting on it (DataLock.acquire never waits), and left it would keep the
        # folder this made.
        _unlink(root, [paths.profile.name, LOCK_NAME])
    finally:
        os.close(root)
    _remove_folders(made)


def _unlink(folder: int, names: list[str]) -> None:
    """Remove `names` (and their temporaries, as outpost/files.py names them) in the
    open `folder`: a symlink by one of these names is removed, never followed."""
    for name in names:
        for each in (name, f".{name}.tmp"):
            with contextlib.suppress(OSError):  # mostly not there: never written
                os.unlink(each, dir_fd=folder)


def _remove_folders(made: list[Path]) -> None:
    """Remove the empty folders of `made` (deepest first), stopping at the first that
    is not: what is in it, and the folders above it, are someone else's."""
    for folder in made:
        try:
            os.rmdir(folder)  # a symlink in its place is refused (ENOTDIR), not followed
        except OSError:
            return
