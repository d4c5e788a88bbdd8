"""Unit tests of outpost/files.py: exclusive creation with an exact mode, atomic replace."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from outpost import files


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_new_creates_with_mode_0600(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "key.pem"
    files.write_new(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert mode_of(path) == 0o600


def test_write_new_mode_is_exact_despite_a_strict_umask(tmp_path: Path, strict_umask: None) -> None:
    path = tmp_path / "public.pem"
    files.write_new(path, b"cert", mode=0o644)
    assert mode_of(path) == 0o644


def test_write_new_honours_a_given_mode(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "script"
    files.write_new(path, b"#!/bin/sh\n", mode=0o700)
    assert mode_of(path) == 0o700


def test_write_new_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        files.write_new(path, b"new")
    assert path.read_bytes() == b"old"


def test_write_new_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    link = tmp_path / "link"
    link.symlink_to(target)  # dangling: O_EXCL must not follow it
    with pytest.raises(FileExistsError):
        files.write_new(link, b"data")
    assert not target.exists()


def test_write_new_writes_empty_and_large_data(tmp_path: Path) -> None:
    files.write_new(tmp_path / "empty", b"")
    assert (tmp_path / "empty").read_bytes() == b""
    big = os.urandom(3 << 20)
    files.write_new(tmp_path / "big", big)
    assert (tmp_path / "big").read_bytes() == big


def test_write_new_in_a_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.write_new(tmp_path / "missing" / "file", b"x")


def test_replace_creates_a_file(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "state.json"
    files.replace(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert mode_of(path) == files.PUBLIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_replace_overwrites_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old content that is longer than the new one")
    files.replace(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_replace_swaps_the_inode(tmp_path: Path) -> None:
    # Atomic replace: the new content is a new file renamed over the old one, so a
    # reader holding the old file keeps seeing the old content in full.
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    with path.open("rb") as reader:
        before = os.fstat(reader.fileno()).st_ino
        files.replace(path, b"new")
        assert reader.read() == b"old"
    assert path.stat().st_ino != before
    assert path.read_bytes() == b"new"


def test_replace_honours_mode(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    files.replace(path, b"new", mode=files.PRIVATE)
    assert mode_of(path) == 0o600
    files.replace(path, b"newer", mode=0o640)
    assert mode_of(path) == 0o640
    assert path.read_bytes() == b"newer"


def test_replace_removes_a_stale_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    stale = tmp_path / ".state.json.tmp"
    stale.write_bytes(b"left by a crash")
    files.replace(path, b"fresh")
    assert path.read_bytes() == b"fresh"
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_replace_many_times(tmp_path: Path) -> None:
    path = tmp_path / "counter"
    for i in range(50):
        files.replace(path, str(i).encode())
    assert path.read_bytes() == b"49"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter"]


@pytest.fixture
def disk_full_after_4_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write takes 4 bytes, then the disk is full."""
    real = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        if os.fstat(fd).st_size >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data)[:4])

    monkeypatch.setattr(os, "write", write)


def test_write_new_cut_short_leaves_no_file(tmp_path: Path, disk_full_after_4_bytes: None) -> None:
    path = tmp_path / "mask.key"
    with pytest.raises(OSError, match="No space"):
        files.write_new(path, b"k" * 32)
    assert sorted(tmp_path.iterdir()) == []  # no short key, no temp file


def test_replace_cut_short_keeps_the_old_content(
    tmp_path: Path, disk_full_after_4_bytes: None
) -> None:
    path = tmp_path / "policy.signed"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        files.replace(path, b"new content")
    assert path.read_bytes() == b"old"
    assert sorted(tmp_path.iterdir()) == [path]


def test_writers_of_one_path_at_once_each_install_a_whole_file(tmp_path: Path) -> None:
    # Two downloads on a hub replica cache one model at once: neither may fail, and what
    # lies at the path is always one writer's whole file (a request serves it meanwhile).
    contents = [bytes([i]) * (8 << 20) for i in range(4)]
    path = tmp_path / "model.tflite"
    start = threading.Barrier(len(contents))
    failed: list[BaseException] = []

    def write(data: bytes) -> None:
        start.wait()
        try:
            files.replace(path, data, files.PRIVATE)
            assert path.read_bytes() in contents
        except BaseException as exc:
            failed.append(exc)

    for _ in range(3):
        writers = [threading.Thread(target=write, args=(c,)) for c in contents]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
    assert failed == []
    assert path.read_bytes() in contents
    assert mode_of(path) == files.PRIVATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
