"""A WAL that lost commits: SQLite stops replaying the WAL at a damaged frame header and
drops every commit after it while `quick_check` passes. The store must notice (its own
record of how far each stream's numbering reached), set the file aside like a damaged
one, count and report the loss, and never give a number twice: not to its own records,
not to one the hub already holds with other content.

Each test kills a real writer with `kill -9` (no clean close: the commits stay in the
WAL), flips one byte of one WAL frame header, and opens the store again; the same run
without the flipped byte shows the store kept whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.store import STREAMS, AgentStore, Bounds, confirmed
from edge.store.recovery import EVENT
from hub.app import Hub
from tests import wal_frames
from tests.conftest import Enroller
from tests.integration.test_store_forward import hub_records, wait_socket, write_agent_settings
from tests.local_api import LocalClient
from tests.support import REPO, AgentProcess, eventually

UNBOUNDED = {s: Bounds(0, 0, 0) for s in STREAMS}

# Twelve results, each its own commit; the hub acknowledged the first four in between.
_WRITER = r"""
import asyncio, sys
from pathlib import Path
from edge.store import AgentStore, Bounds

async def main():
    bounds = {s: Bounds(0, 0, 0) for s in ("results", "events", "metrics")}
    store = AgentStore(Path(sys.argv[1]), bounds)
    await store.start()
    for n in range(12):
        done = await store.append("results", [{"n": n}])
        print("ok", done.first_seq, flush=True)
        if n == 5:
            await store.acknowledge("results", 4)
    print("done", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


def _write_then_kill(path: Path) -> list[int]:
    """Run the writer, `kill -9` it once every append is confirmed; return the numbers."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    assert writer.stdout is not None
    confirmed = []
    try:
        for line in writer.stdout:
            words = line.split()
            if words == ["done"]:
                break
            confirmed.append(int(words[1]))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    assert confirmed == list(range(1, 13)), confirmed
    assert Path(f"{path}-wal").stat().st_size > 0, "the commits are not in the WAL any more"
    return confirmed


async def _events(store: AgentStore) -> list[dict[str, Any]]:
    rows = await store.batch("events", 0, max_records=100, max_bytes=1 << 20)
    return [body for _, _, body in rows]


@pytest.mark.parametrize("flip", [True, False], ids=["flipped", "intact"])
async def test_a_store_whose_wal_lost_confirmed_commits_is_set_aside(
    tmp_path: Path, flip: bool
) -> None:
    path = tmp_path / "store.db"
    _write_then_kill(path)
    wal = Path(f"{path}-wal")
    frame = wal_frames.frame_losing_results(path, keep_at_least=6, below=12)
    held_after_flip = wal_frames.read_copy(path, frame, wal_frames.last_results_seq)
    if flip:
        wal_frames.flip_frame_header(wal, frame)
        evidence = wal.read_bytes()

    store = AgentStore(path, UNBOUNDED)
    await store.start()
    try:
        events = await _events(store)
        counters = (await store.stats())["counters"]
        cursors = await store.cursors()
        kept = await store.batch("results", 0, max_records=100, max_bytes=1 << 20)
        after = await store.append("results", [{"n": "after"}])
        aligned = await store.aligned()
        # The hub holds 1..4: the successor's first batch starts right after that and
        # covers the numbers lost with the old store (the hub's mark moves past them).
        await store.align("results", 4)
        cursors_aligned = await store.cursors()
    finally:
        await store.close()

    if not flip:
        assert store.set_aside is None
        assert store.lost is None
        assert [seq for seq, _, _ in kept] == list(range(5, 13))
        assert events == []
        assert "set_aside" not in counters
        assert after.first_seq == 13
        return

    assert 6 <= held_after_flip < 12  # what SQLite alone would have kept, silently
    assert store.set_aside is not None
    assert ".corrupt-" in store.set_aside.name
    assert Path(f"{store.set_aside}-wal").read_bytes() == evidence, "the evidence was changed"
    # Confirmed 1..12, the hub acknowledged 1..4: up to 8 confirmed records are lost.
    assert store.lost == {"results": 8, "events": 0, "metrics": 0}
    assert counters["lost.results"] == 8
    assert counters["set_aside"] == 1
    assert len(events) == 1
    event = events[0]
    assert event["event"] == EVENT == "store.set_aside"
    assert event["set_aside"] == store.set_aside.name
    assert event["lost"]["results"] == 8
    assert event["numbered_to"]["results"] == 12
    assert f"results numbered to 12, held to {held_after_flip}" in event["reason"]
    # Never a number twice: the successor numbers after the last one confirmed.
    assert kept == []
    assert cursors["results"] == (12, 12)
    assert after.first_seq == 13
    assert aligned == set(), "a successor waits for the hub's marks before sending"
    assert cursors_aligned["results"] == (4, 13)


async def test_a_missing_store_is_replaced_numbering_after_its_record(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _write_then_kill(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    store = AgentStore(path, UNBOUNDED)
    await store.start()
    try:
        after = await store.append("results", [{"n": "after"}])
        events = await _events(store)
    finally:
        await store.close()

    assert store.set_aside is None
    assert store.lost == {"results": 8, "events": 0, "metrics": 0}
    assert after.first_seq == 13
    assert [e["reason"] for e in events] == ["the store file is missing"]


async def test_a_swap_interrupted_by_a_crash_is_finished_at_the_next_open(
    tmp_path: Path,
) -> None:
    """Killed after the old store went aside, before its successor was moved in."""
    path = tmp_path / "store.db"
    _write_then_kill(path)
    wal_frames.flip_frame_header(
        Path(f"{path}-wal"), wal_frames.frame_losing_results(path, keep_at_least=6, below=12)
    )
    first = AgentStore(path, UNBOUNDED)
    await first.close()
    assert first.set_aside is not None
    # Undo the last step of the swap: the successor back under its building name, and
    # the record of the swap under way (naming where the old store went) back in place.
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(Path(f"{path}.successor{suffix}"))
    Path(f"{path}.swap").write_text(first.set_aside.name)

    again = AgentStore(path, UNBOUNDED)
    await again.start()
    try:
        events = await _events(again)
        after = await again.append("results", [{"n": "after"}])
    finally:
        await again.close()

    assert again.set_aside is None, "the swap was finished, not done twice"
    assert [e["event"] for e in events] == [EVENT]
    assert after.first_seq == 13
    assert len(list(tmp_path.glob("store.db.corrupt-*[0-9]"))) == 1


# ------------------------------------------------------------- end to end, with a hub


async def _post(client: LocalClient, ids: list[str]) -> None:
    status, body = await client.append("results", [{"id": i} for i in ids])
    assert status == 201, body


def _ids(n: int) -> list[list[str]]:
    return [[uuid.uuid4().hex for _ in range(3)] for _ in range(n)]


async def _acked(client: LocalClient, seq: int) -> bool:
    fill = (await client.status())["store"]["streams"]["results"]
    return bool(fill["acked_seq"] >= seq)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("flip", [True, False], ids=["flipped", "intact"])
async def test_an_agent_whose_wal_lost_commits_reports_it_and_reuses_no_number(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    flip: bool,
) -> None:
    assert hub.parts.broker is not None
    paths, identity = await enroll_device()
    write_agent_settings(paths, "[agent.sync]\nack_timeout_s = 2\n")
    device = identity.device_id
    sent, unsent, later = _ids(5), _ids(5), _ids(2)

    # Fifteen results reach the hub (acknowledged), fifteen more wait while it is away.
    agent = agents(paths)
    client = await wait_socket(paths, agent)
    try:
        for batch in sent:
            await _post(client, batch)
        await eventually(lambda: _acked(client, 15), timeout=30, what="15 results acknowledged")
        await hub.parts.broker.stop()
        for batch in unsent:
            await _post(client, batch)
    finally:
        await client.close()
    agent.signal(signal.SIGKILL)
    agent.wait(10)
    paths.socket.unlink()  # the dead agent's: wait for the next one's
    at_hub = hub_records(hub, device)
    assert [body["id"] for _, body in at_hub] == [i for b in sent for i in b]

    if flip:  # lose commits the hub holds results of, and every one it does not
        store = paths.store
        frame = wal_frames.frame_losing_results(store, keep_at_least=3, below=15)
        wal_frames.flip_frame_header(Path(f"{store}-wal"), frame)

    await hub.parts.broker.start()
    agent = agents(paths)
    client = await wait_socket(paths, agent)
    try:
        for batch in later:
            await _post(client, batch)
        expected = [i for b in (sent if flip else sent + unsent) + later for i in b]

        def reported() -> bool:
            events = hub_records(hub, device, "events")
            return any(body.get("event") == EVENT for _, body in events)

        async def arrived() -> bool:
            # Results and events travel in batches of their own: wait for both.
            results = {b["id"] for _, b in hub_records(hub, device)} >= set(expected)
            return results and (reported() or not flip)

        await eventually(arrived, timeout=60, what="the results and the loss report")
        status = await client.status()
    finally:
        await client.close()

    held = hub_records(hub, device)
    ids = [body["id"] for _, body in held]
    assert len(ids) == len(set(ids)), "a record reached the hub twice"
    assert held[:15] == at_hub, "the hub's records changed"
    events = [body for _, body in hub_records(hub, device, "events")]
    reports = [e for e in events if e.get("event") == EVENT]
    aside = list(paths.root.glob("store.db.corrupt-*[0-9]"))
    counters = status["store"]["counters"]
    if not flip:
        assert ids == expected
        assert reports == []
        assert aside == []
        assert "lost.results" not in counters
        return

    # The fifteen posted while the hub was away are lost with the commits, and said so.
    assert set(ids) == set(expected)
    assert len(aside) == 1
    assert [r["lost"]["results"] for r in reports] == [15]
    assert reports[0]["numbered_to"]["results"] == 30
    assert counters["lost.results"] == 15
    assert counters["set_aside"] == 1
    # Numbered after the last number the old store gave, never one the hub held.
    assert [seq for seq, _ in held[15:]] == list(range(31, 37))
    assert "is damaged (it lost confirmed commits" in agent.output()


def _integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
    return str(verdict)


async def test_the_mark_file_lags_never_leads_and_a_torn_one_is_ignored(tmp_path: Path) -> None:
    """A mark behind the database (a power cut lost its last write) or one that does not
    verify (torn) keeps the store: it can only miss a loss, never invent one."""
    path = tmp_path / "store.db"
    store = AgentStore(path, UNBOUNDED)
    await store.start()
    await asyncio.gather(*(store.append("results", [{"n": n}]) for n in range(5)))
    await store.close()
    mark = Path(f"{path}.confirmed")
    recorded = confirmed.read(mark)
    assert recorded is not None
    assert recorded["results"].last == 5
    assert mark.stat().st_mode & 0o777 == 0o600

    mark.write_bytes(confirmed.encode({"results": confirmed.Mark(3, 0)}))  # lagging
    lagging = AgentStore(path, UNBOUNDED)
    await lagging.close()
    torn = bytearray(confirmed.encode({"results": confirmed.Mark(99, 0)}))
    torn[-1] ^= 1
    mark.write_bytes(bytes(torn))
    ignored = AgentStore(path, UNBOUNDED)
    await ignored.close()
    mark.write_bytes(confirmed.encode({"results": confirmed.Mark(6, 0)}))  # ahead: lost
    refused = AgentStore(path, UNBOUNDED)
    await refused.close()

    assert lagging.set_aside is None
    assert ignored.set_aside is None
    assert refused.set_aside is not None
    assert _integrity(path) == "ok"
