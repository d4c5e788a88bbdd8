"""The store's key (`store.key`) and encryption at rest (`runtime.encrypt_store`): a store
holding sealed records is never opened with a key that does not open them (the records
would be left out as damage and deleted at the hub's ack), and switching encryption on
or off seals or opens the records kept instead of losing them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from edge.store import AgentStore, Bounds, RecordCipher, StoreKeyError
from edge.store.cipher import new_key
from edge.store.keyfile import open_keyed
from tests.conftest import Enroller
from tests.support import AgentProcess

UNBOUNDED = Bounds(0, 0, 0)
BOUNDS = {"results": UNBOUNDED, "events": UNBOUNDED, "metrics": UNBOUNDED}


async def _fill(store: AgentStore, n: int) -> None:
    await store.start()
    try:
        await store.append("results", [{"n": i} for i in range(1, n + 1)])
    finally:
        await store.close()


async def _all(store: AgentStore) -> list[tuple[int, object]]:
    rows = await store.batch("results", 0, max_records=1000, max_bytes=1 << 20)
    return [(seq, body) for seq, _, body in rows]


async def _append_then_read(store: AgentStore) -> list[tuple[int, object]]:
    await store.start()
    try:
        await store.append("results", [{"n": 99}])
        return await _all(store)
    finally:
        await store.close()


EXPECTED = [(i, {"n": i}) for i in range(1, 6)] + [(6, {"n": 99})]


async def test_a_lost_key_is_refused_with_what_to_do_and_nothing_is_lost(tmp_path: Path) -> None:
    path, key = tmp_path / "store.db", tmp_path / "store.key"
    await _fill(open_keyed(path, BOUNDS, key, encrypt=True), 5)
    kept = key.read_bytes()
    key.unlink()  # a backup restored without it, a wiped key folder

    with pytest.raises(StoreKeyError) as refused:
        open_keyed(path, BOUNDS, key, encrypt=True)
    message = str(refused.value)
    assert "5 records sealed under another key than store.key" in message
    assert "restore the store.key" in message
    assert f"move {path}" in message
    assert not key.exists(), "no new key is written over the question"

    key.write_bytes(kept)  # the operator restores it: everything is there
    assert await _append_then_read(open_keyed(path, BOUNDS, key, encrypt=True)) == EXPECTED


async def test_a_replaced_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await _fill(AgentStore(path, BOUNDS, RecordCipher(new_key())), 5)
    with pytest.raises(StoreKeyError, match="sealed under another key"):
        AgentStore(path, BOUNDS, RecordCipher(new_key()))


async def test_a_store_from_before_the_key_check_is_checked_by_its_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    await _fill(AgentStore(path, BOUNDS, RecordCipher(new_key())), 5)
    with sqlite3.connect(path) as conn:  # as a store written before `sealing` was kept
        conn.execute("DELETE FROM meta WHERE key = 'sealing'")
    conn.close()
    with pytest.raises(StoreKeyError, match="sealed under another key"):
        AgentStore(path, BOUNDS, RecordCipher(new_key()))


async def test_a_new_store_makes_its_key_silently(tmp_path: Path) -> None:
    path, key = tmp_path / "store.db", tmp_path / "store.key"
    store = open_keyed(path, BOUNDS, key, encrypt=True)
    await store.close()
    assert len(key.read_bytes()) == 32
    assert key.stat().st_mode & 0o777 == 0o600


async def test_a_drained_store_takes_a_new_key(tmp_path: Path) -> None:
    """No record to lose: a replaced key is taken, and what follows is sealed under it."""
    path, key = tmp_path / "store.db", tmp_path / "store.key"
    store = open_keyed(path, BOUNDS, key, encrypt=True)
    await store.start()
    await store.append("results", [{"n": 1}])
    await store.acknowledge("results", 1)
    await store.close()
    key.unlink()
    store = open_keyed(path, BOUNDS, key, encrypt=True)
    await store.start()
    try:
        await store.append("results", [{"n": 2}])
        assert [b for _, b in await _all(store)] == [{"n": 2}]
    finally:
        await store.close()
    assert key.exists()


async def test_switching_encryption_on_seals_the_plain_backlog(tmp_path: Path) -> None:
    path, key = tmp_path / "store.db", tmp_path / "store.key"
    await _fill(open_keyed(path, BOUNDS, key, encrypt=False), 5)
    assert await _append_then_read(open_keyed(path, BOUNDS, key, encrypt=True)) == EXPECTED
    with sqlite3.connect(path) as conn:  # sealed on the disk, not only readable
        bodies = [r[0] for r in conn.execute("SELECT body FROM records")]
    conn.close()
    cipher = RecordCipher(key.read_bytes())
    assert [cipher.open("results", i, b) for i, b in enumerate(bodies, start=1)]


async def test_switching_encryption_off_opens_the_sealed_backlog(tmp_path: Path) -> None:
    path, key = tmp_path / "store.db", tmp_path / "store.key"
    await _fill(open_keyed(path, BOUNDS, key, encrypt=True), 5)
    assert await _append_then_read(open_keyed(path, BOUNDS, key, encrypt=False)) == EXPECTED


async def test_switching_encryption_off_without_the_key_is_refused(tmp_path: Path) -> None:
    path, key = tmp_path / "store.db", tmp_path / "store.key"
    await _fill(open_keyed(path, BOUNDS, key, encrypt=True), 5)
    key.unlink()
    with pytest.raises(StoreKeyError, match="encrypt_store is off"):
        open_keyed(path, BOUNDS, key, encrypt=False)


def test_a_key_file_that_is_not_a_key_is_named(tmp_path: Path) -> None:
    key = tmp_path / "store.key"
    key.write_bytes(b"short")
    with pytest.raises(StoreKeyError, match=r"store.key holds 5 bytes, not an AES key"):
        open_keyed(tmp_path / "store.db", BOUNDS, key, encrypt=True)


def test_a_body_too_short_to_be_sealed_is_damage_not_a_stuck_stream() -> None:
    cipher = RecordCipher(new_key())
    for body in (b"", b"\x81\xa1n\x01", b"x" * 27):  # < nonce + tag
        with pytest.raises(InvalidTag):
            cipher.open("results", 1, body)


async def test_the_agent_refuses_to_start_on_a_lost_key_and_says_why(
    enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """`outpost-agent run`: an error line naming what to do, exit 2, no traceback; the
    records and the store stay as they were."""
    paths, _ = await enroll_device(profile="x86-gateway")  # encrypt_store = true
    await _fill(AgentStore(paths.store, BOUNDS, RecordCipher.from_key_file(paths.store_key)), 2)
    paths.store_key.unlink()  # lost with a restore that left it out

    agent = agents(paths)

    assert agent.process.wait(timeout=60) == 2, agent.output()
    assert "outpost-agent: error: " in agent.output()
    assert "restore the store.key that sealed them" in agent.output()
    assert "Traceback" not in agent.output()
    assert not paths.store_key.exists()  # no key made over the question
