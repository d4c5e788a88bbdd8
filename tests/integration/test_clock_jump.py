"""A device whose wall clock jumps (an RTC-less board setting its time late, an NTP step
back) keeps its promises: every record it confirmed reaches the hub once, it stays
online, and its heartbeats go on. The agent runs under libfaketime, whose offset the
test changes while it runs; the monotonic clock (timers, the event loop) is left alone,
as a real clock step leaves it."""

from __future__ import annotations

import contextlib
import glob
import sqlite3
import time
from pathlib import Path

from hub.app import Hub
from tests.conftest import Enroller
from tests.integration.test_store_forward import hub_records, wait_socket
from tests.support import AgentProcess, device_online, eventually

# Installed by `scripts/setup.sh --test-tools` (Debian's libfaketime).
FAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
# Backwards by less than the 5 minutes certificates are backdated, so a reconnect during
# the step still finds the hub's certificate valid; forwards by two hours.
STEPS = ("+0", "+2h", "-3m", "+0")
PER_STEP = 25
# The hub marks a device offline after three silent intervals. At the tests' usual 0.5 s,
# a loaded machine delayed a beat past that (the agent reads the offset file at every
# clock call), and the check then read the device between the beat's count and its
# presence write: offline for a reason that was not the clock.
HEARTBEAT_S = 1.0


async def test_records_and_presence_survive_clock_jumps(
    hub: Hub, enroll_device: Enroller, tmp_path: Path
) -> None:
    assert FAKETIME, "libfaketime is missing: run scripts/setup.sh --test-tools"
    paths, identity = await enroll_device()
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    agent = AgentProcess(
        paths.root,
        log=tmp_path / "agent.log",
        heartbeat_interval=HEARTBEAT_S,
        env={
            "LD_PRELOAD": FAKETIME[0],
            "FAKETIME_TIMESTAMP_FILE": str(offset),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        },
    )
    try:
        client = await wait_socket(paths, agent)
        await eventually(
            lambda: device_online(hub, identity.device_id), timeout=15, what="device online"
        )
        confirmed: list[int] = []
        for n, step in enumerate(STEPS):
            offset.write_text(step + "\n")
            beats = hub.parts.ingest.outcomes[("heartbeat", "accepted")]
            for i in range(PER_STEP):
                status, body = await client.append("results", [{"step": n, "i": i}])
                assert status == 201, body
                confirmed.append(body["first_seq"])

            async def beating(before: int = beats) -> bool:
                return hub.parts.ingest.outcomes[("heartbeat", "accepted")] > before + 1

            await eventually(beating, timeout=20, what=f"heartbeats with the clock at {step}")
            # Online throughout: a step that stopped the beats for a while, or dropped the
            # link, leaves an "offline" in the device's event log.
            log = await hub.parts.store.device_events(identity.device_id, before=None, limit=100)
            assert [e.kind for e in log if e.kind == "offline"] == [], (step, log)

        async def all_there() -> bool:
            return [s for s, _ in hub_records(hub, identity.device_id)] == sorted(confirmed)

        await eventually(all_there, timeout=20, what="every confirmed record at the hub, once")
        held = hub_records(hub, identity.device_id)
        assert len(held) == len(STEPS) * PER_STEP
        # The device's clock really moved: it stamped some records two hours ahead.
        with contextlib.closing(
            sqlite3.connect(f"file:{hub.paths.database}?mode=ro", uri=True)
        ) as db:
            (latest,) = db.execute(
                "SELECT MAX(ts) FROM records WHERE device_id = ? AND stream = 'results'",
                (identity.device_id,),
            ).fetchone()
        assert latest > time.time() + 3600
        assert agent.process.poll() is None, agent.output()
    finally:
        agent.stop()
