"""Setting a damaged store aside survives a crash at any point of the swap: the old
database never gets separated from its WAL (whose frames SQLite would otherwise replay
into the successor moved in beside them), and the swap is finished at the next open."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import msgspec
import pytest

from edge.store import STREAMS, confirmed
from edge.store.recovery import EVENT, open_store

UNSENT = 50


def _killed_store_with_wal(root: Path) -> Path:
    """A store whose newest commits are only in its WAL (copied while open: what kill -9
    leaves), and a mark saying more was committed: it is set aside at the next open."""
    work, data = root / "work", root / "data"
    work.mkdir()
    data.mkdir()
    open_store(work / "store.db").db.conn.close()
    conn = sqlite3.connect(work / "store.db", isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("BEGIN")
    for seq in range(1, UNSENT + 1):
        conn.execute(
            "INSERT INTO records (stream, seq, ts, body) VALUES ('results', ?, 0, ?)",
            (seq, msgspec.msgpack.encode({"n": seq})),
        )
    conn.execute(
        "UPDATE streams SET next_seq = ?, records = ? WHERE stream = 'results'",
        (UNSENT + 1, UNSENT),
    )
    conn.execute("COMMIT")
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(work / f"store.db{suffix}", data / f"store.db{suffix}")
    conn.close()
    marks = {s: confirmed.Mark(0, 0) for s in STREAMS}
    marks["results"] = confirmed.Mark(UNSENT + 10, 0)
    confirmed.MarkFile(confirmed.path_for(data / "store.db")).write(marks)
    return data / "store.db"


def _held(path: Path) -> int:
    """Results records in the store at `path` as SQLite opens it (WAL replayed)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM records WHERE stream = 'results'").fetchone()
        return int(n)
    finally:
        conn.close()


def _crash_at_rename(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The process dies just before the `n`th rename (0: the first)."""
    real = Path.rename
    done = [0]

    def rename(self: Path, target: str | Path) -> Path:
        if done[0] == n:
            raise SystemExit("killed")
        done[0] += 1
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)


# Renames of a swap: the old store's -wal, -shm and database aside; the successor in.
@pytest.mark.parametrize("crash_before", range(4))
def test_a_crash_at_any_rename_keeps_each_store_with_its_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_before: int
) -> None:
    path = _killed_store_with_wal(tmp_path)
    with monkeypatch.context() as patch:
        _crash_at_rename(patch, crash_before)
        with pytest.raises(SystemExit):
            open_store(path)

    opened = open_store(path)  # the agent starts again
    try:
        bodies = opened.db.execute("SELECT body FROM records WHERE stream = 'events'").fetchall()
        held = opened.db.execute("SELECT COUNT(*) FROM records WHERE stream = 'results'")
        (results,) = held.fetchone()
    finally:
        opened.db.conn.close()
    assert opened.set_aside is None, "the successor is not itself set aside"
    assert [msgspec.msgpack.decode(b[0])["event"] for b in bodies] == [EVENT]
    assert results == 0, "no frame of the old store's WAL was replayed into the successor"
    (aside,) = [
        p
        for p in path.parent.glob("store.db.corrupt-*")
        if not p.name.endswith("-wal") and not p.name.endswith("-shm")
    ]  # one old store set aside, once
    assert Path(f"{aside}-wal").exists()
    assert _held(aside) == UNSENT, "the old store kept its WAL"
    assert not Path(f"{path}.swap").exists()
    assert not Path(f"{path}.successor").exists()


def test_a_wal_left_without_its_store_is_set_aside_not_replayed(tmp_path: Path) -> None:
    path = _killed_store_with_wal(tmp_path)
    path.unlink()  # the database gone, its WAL and index left

    opened = open_store(path)
    try:
        bodies = opened.db.execute("SELECT body FROM records WHERE stream = 'events'").fetchall()
        (results,) = opened.db.execute(
            "SELECT COUNT(*) FROM records WHERE stream = 'results'"
        ).fetchone()
    finally:
        opened.db.conn.close()
    assert results == 0
    event = msgspec.msgpack.decode(bodies[0][0])
    assert event["reason"] == "the store file is missing (its log is not)"
    assert opened.set_aside is not None
    assert Path(f"{opened.set_aside}-wal").exists()
    assert not Path(f"{path}-wal").exists() or _held(path) == 0
