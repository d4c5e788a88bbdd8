"""Courier bundles: a device's backlog carried to the hub on a stick.

One device's results stream of `RECORDS` records (1,000,000 unless
`OUTPOST_BENCH_COURIER_RECORDS` says otherwise), each a msgpack map shaped as the agent
writes an inference result (`edge/inference/reporting.py` `result_record`: kind, model,
version, label, confidence, scores by label, latency, ts), ~180 bytes, made up with a
fixed seed; read from a list, not from an agent's store (what is timed starts from the
rows `store.batch_packed` returns).

- Export: the rows made into the upload batches of 1,000 records that `edge/courier.py`
  (`CourierDesk._unacknowledged`) makes, the device content encoded, sealed (signed with
  the device's P-256 key, its certificate carried; encrypted to the hub's P-256 bundle
  key; zstd level 3) and written as parts of at most 1 GiB (each synced), records/s.
  The raw limit: the same rows msgpack-encoded as a bare list, zstd-compressed at the
  same level and written to one file (synced).
- Size: the sealed bundle's bytes per record against the bare msgpack + zstd's.
- Import: the parts assembled and `BundleImporter.import_bundle` (the hub's own path, as
  `outpost-hub bundle import` and `POST /api/v1/bundles` call it: decrypt, check the
  certificate against the fleet's CA and the registry, verify the signature, decode,
  store through `apply_uploads` in transactions of 100 batches, make the ack bundle)
  into a hub data folder's SQLite database, records/s. The raw limit: bare `sqlite3`
  inserting the same rows into a table of the hub's records' shape, transactions of
  100,000 rows, with the hub's pragmas (WAL, `synchronous=FULL`, foreign keys on).

Three rounds, each on a hub data folder of its own, alternating which of each pair goes
first (in one process the first big run pays for fresh memory); every figure is the
median round's. The export's note gives each step's time, and the process's peak
resident memory in the first round (where the export runs before anything bigger): what
an agent would need on top of its own to export such a backlog.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import psutil
from cryptography.hazmat.primitives.asymmetric import ec

from hub.courier.desk import open_desk
from hub.courier.importer import BATCHES_PER_TRANSACTION
from hub.courier.keys import load_bundle_key
from hub.fleet import pki
from hub.store import Device, HubStore
from outpost import __version__, tls, wire
from outpost.courier import content, parts, sealing
from outpost.courier.sealing import Header
from tests.bench.common import Result, make_hub

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

RECORDS = int(os.environ.get("OUTPOST_BENCH_COURIER_RECORDS", "1000000"))
DEVICE = "dev-bench0000001"
STREAM: Final[wire.Stream] = "results"
MAX_PART = 1 << 30  # bytes: one part for this bundle, as a 1 GiB --max-size
ROWS_PER_TRANSACTION = BATCHES_PER_TRANSACTION * wire.MAX_BATCH_RECORDS  # the hub's
ROUNDS = 3  # each on a hub of its own; the figures are the median round's
LABELS = ("ok", "scratch", "spot", "crack")  # surface-defect 1.0.0's

Row = tuple[int, float, bytes]  # (seq, ts, body) as the agent's store hands them out


def _rows(count: int) -> list[Row]:
    """`count` results of a camera device, 8 in 10 "ok", ten a second."""
    rand = random.Random(7)  # made-up answers, the same each run
    start = 1.78e9
    rows = []
    for seq in range(1, count + 1):
        ts = start + seq / 10
        label = "ok" if rand.random() < 0.8 else rand.choice(LABELS[1:])
        confidence = round(rand.uniform(0.55, 0.999), 6)
        rest = [rand.random() for _ in LABELS[1:]]
        scale = (1 - confidence) / sum(rest)
        others = iter(rest)
        scores = {
            name: confidence if name == label else round(next(others) * scale, 6) for name in LABELS
        }
        record = {
            "kind": "inference",
            "model": "surface-defect",
            "version": "1.0.0",
            "label": label,
            "confidence": confidence,
            "scores": scores,
            "latency_ms": round(rand.uniform(1.2, 2.6), 3),
            "ts": ts,
        }
        rows.append((seq, ts, msgspec.msgpack.encode(record)))
    return rows


def _export(
    rows: list[Row],
    device_key: ec.EllipticCurvePrivateKey,
    cert_pem: bytes,
    hub_key: ec.EllipticCurvePublicKey,
    fleet: str,
    folder: Path,
) -> tuple[list[float], int, list[Path]]:
    """When each step of making, sealing and writing the device's bundle ended (seconds
    from the start: batches, content encoded, sealed, written); its size; its parts."""
    started = time.perf_counter()
    batches = []
    after = 0
    for first in range(0, len(rows), wire.MAX_BATCH_RECORDS):
        chunk = rows[first : first + wire.MAX_BATCH_RECORDS]
        last = chunk[-1][0]
        batches.append(
            wire.Records(
                stream=STREAM,
                from_seq=after + 1,
                to_seq=last,
                seqs=[r[0] for r in chunk],
                ts=[r[1] for r in chunk],
                bodies=[r[2] for r in chunk],
            )
        )
        after = last
    carried = content.DeviceContent(
        batches=batches,
        aligned=[],  # a site that never reached the hub: a fresh store's numbering
        store_id="bench-store-0001",
        agent_version=__version__,
        status={"device_id": DEVICE, "version": __version__, "models": ["surface-defect"]},
    )
    batched = time.perf_counter() - started
    header = Header(
        v=sealing.VERSION,
        kind=content.KIND_DEVICE,
        fleet=fleet,
        sender=DEVICE,
        to=content.HUB,
        id=os.urandom(16).hex(),
        created_at=time.time(),
    )
    body = content.encode(carried)
    encoded = time.perf_counter() - started
    sealed = sealing.seal(header, body, signer=device_key, recipient=hub_key, cert=cert_pem)
    del batches, carried, body  # as the agent's export, which returns with the bundle only
    done_sealing = time.perf_counter() - started
    written = parts.write_parts(sealed, folder, f"outpost-{DEVICE}-bench", MAX_PART)
    steps = [batched, encoded, done_sealing, time.perf_counter() - started]
    return steps, len(sealed), written


def _bare_export(rows: list[Row], path: Path) -> tuple[float, int]:
    """Seconds to msgpack-encode, zstd-compress and write the rows; the compressed size."""
    started = time.perf_counter()
    packed = zstd.compress(msgspec.msgpack.encode(rows), sealing.ZSTD_LEVEL)
    with path.open("wb") as out:
        out.write(packed)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - started, len(packed)


def _bare_import(rows: list[Row], path: Path) -> float:
    """Seconds for bare sqlite3 to insert the rows as the hub's records table holds them."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute(
            """CREATE TABLE records (
                device_id TEXT NOT NULL,
                stream TEXT NOT NULL,
                seq INTEGER NOT NULL,
                ts REAL NOT NULL,
                body BLOB NOT NULL,
                received_at REAL NOT NULL,
                PRIMARY KEY (device_id, stream, seq)
            ) WITHOUT ROWID"""
        )
        now = time.time()
        full = [(DEVICE, STREAM, seq, ts, body, now) for seq, ts, body in rows]
        started = time.perf_counter()
        for first in range(0, len(full), ROWS_PER_TRANSACTION):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO records (device_id, stream, seq, ts, body, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                full[first : first + ROWS_PER_TRANSACTION],
            )
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


def _device(serial: int) -> Device:
    return Device(
        device_id=DEVICE,
        profile="generic",
        labels={},
        online=False,
        last_seen=None,
        last_heartbeat=None,
        heartbeat_interval=None,
        agent_version=None,
        capabilities={},
        load={},
        enrolled_at=time.time(),
        cert_serial=f"{serial:x}",
        cert_not_before=time.time() - 60,
        cert_not_after=time.time() + 86400,
    )


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _progress(text: str) -> None:
    print(f"    courier: {text}", file=sys.stderr, flush=True)


@dataclass
class Round:
    """One round's times (seconds) and sizes (bytes)."""

    export_steps: list[float] = field(default_factory=list)  # see _export
    bare_export_s: float = 0.0
    sealed_size: int = 0
    bare_size: int = 0
    part_count: int = 0
    assembled_s: float = 0.0
    import_s: float = 0.0
    opened_steps: list[float] = field(default_factory=list)  # unsealed, verified, decoded
    bare_import_s: float = 0.0
    export_peak: int = 0  # peak resident bytes of the process (round 1 only)

    @property
    def export_s(self) -> float:
        return self.export_steps[-1]


async def _round(root: Path, rows: list[Row], *, ours_first: bool) -> Round:
    """Export, bare export, import, bare import into a hub of its own; which of each pair
    goes first alternates by round (the first of two big runs in a process pays more
    for fresh memory)."""
    done = Round()
    paths, config = make_hub(root / "hub")
    store = HubStore(config.database(paths.database))
    try:
        desk = open_desk(paths, store, config)  # makes the bundle key if need be
        ca_key, ca_cert = pki.load_ca(paths.ca_key.read_bytes(), paths.ca_cert.read_bytes())
        device_key = pki.new_ec_key()
        issued = pki.issue(
            ca_key, ca_cert, common_name=DEVICE, public_key=device_key.public_key(), days=1
        )
        await store.add_device(_device(issued.serial))
        hub_key = load_bundle_key(paths).public_key()
        fleet = tls.fingerprint(paths.ca_cert.read_bytes())
        stick = root / "stick"

        def export() -> None:
            done.export_steps, done.sealed_size, written = _export(
                rows, device_key, issued.pem, hub_key, fleet, stick
            )
            done.part_count = len(written)
            # Meaningful in the first round, where nothing bigger ran before it.
            done.export_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        def bare_export() -> None:
            done.bare_export_s, done.bare_size = _bare_export(rows, root / "bare.msgpack.zst")

        for step in (export, bare_export) if ours_first else (bare_export, export):
            step()

        async def import_() -> None:
            started = time.perf_counter()
            ((_, sealed),) = parts.assemble([stick])
            done.assembled_s = time.perf_counter() - started
            outcome = await desk.importer.import_bundle(sealed)
            done.import_s = time.perf_counter() - started
            if outcome.stored[STREAM] != len(rows) or outcome.repeated or outcome.waiting:
                raise RuntimeError(f"the import stored other than every record: {outcome}")
            marks = await store.stream_marks([DEVICE])
            if marks.get((DEVICE, STREAM)) != len(rows):
                raise RuntimeError(f"the hub's mark after the import is {marks}")
            # Where the import's time goes: the bundle opened again (not stored twice).
            started = time.perf_counter()
            opened = sealing.unseal(sealed, load_bundle_key(paths))
            unsealed = time.perf_counter() - started
            sealing.verify(opened, device_key.public_key(), "the bench's bundle")
            verified = time.perf_counter() - started
            content.decode_device(opened.body)
            done.opened_steps = [unsealed, verified, time.perf_counter() - started]

        async def bare_import() -> None:
            done.bare_import_s = _bare_import(rows, root / "bare.db")

        for call in (import_, bare_import) if ours_first else (bare_import, import_):
            await call()
    finally:
        store.close()
    return done


async def _run(root: Path) -> list[Result]:
    began = time.perf_counter()
    rss_empty = _rss()
    rows = _rows(RECORDS)
    rss_rows = _rss()
    count = len(rows)
    size = sum(len(r[2]) for r in rows) / count
    _progress(f"{count:,} records of {size:.0f} B made in {time.perf_counter() - began:.1f} s")

    rounds = []
    for number in range(1, ROUNDS + 1):
        folder = root / f"round-{number}"
        done = await _round(folder, rows, ours_first=number % 2 == 1)
        shutil.rmtree(folder)
        rounds.append(done)
        _progress(
            f"round {number}: exported in {done.export_s:.1f} s (bare {done.bare_export_s:.1f} "
            f"s), imported in {done.import_s:.1f} s (bare {done.bare_import_s:.1f} s)"
        )

    def median_round(key: Callable[[Round], float]) -> Round:
        return sorted(rounds, key=key)[len(rounds) // 2]

    ex = median_round(lambda r: r.export_s)
    steps = ex.export_steps
    bare_export_s = statistics.median(r.bare_export_s for r in rounds)
    im = median_round(lambda r: r.import_s)
    unsealed, verified, decoded = im.opened_steps
    bare_import_s = statistics.median(r.bare_import_s for r in rounds)
    peak = rounds[0].export_peak
    scale = "" if count == 1_000_000 else " (scaled down from 1,000,000)"
    about = f"{count:,} records of {size:.0f} B{scale}; median of {ROUNDS} alternating rounds"
    results = [
        Result(
            "courier: export (encode, seal, write)",
            count / ex.export_s,
            count / bare_export_s,
            "rec/s",
            f"{about}; batches of {wire.MAX_BATCH_RECORDS:,}, {ex.part_count} part(s), "
            f"{ex.export_s:.1f} s: batches {steps[0]:.1f} s, encode {steps[1] - steps[0]:.1f} "
            f"s, seal {steps[2] - steps[1]:.1f} s, write {steps[3] - steps[2]:.1f} s; peak "
            f"memory {(peak - rss_empty) / 2**20:,.0f} MiB over the process's before the "
            f"rows (the rows {(rss_rows - rss_empty) / 2**20:,.0f} MiB of it); raw = msgpack "
            f"+ zstd {sealing.ZSTD_LEVEL} of the rows, written (both synced)",
        ),
        Result(
            "courier: bundle size",
            ex.sealed_size / count,
            ex.bare_size / count,
            "B/rec",
            f"{ex.sealed_size / 2**20:.1f} MiB sealed; raw = msgpack + zstd "
            f"{sealing.ZSTD_LEVEL} of (seq, ts, body) rows",
        ),
        Result(
            "courier: import (assemble, open, store)",
            count / im.import_s,
            count / bare_import_s,
            "rec/s",
            f"into SQLite, {im.import_s:.1f} s: assemble {im.assembled_s:.1f} s, unseal "
            f"{unsealed:.1f} s, verify {verified - unsealed:.1f} s, decode "
            f"{decoded - verified:.1f} s, the rest storing and the ack; raw = bare "
            f"sqlite3 inserts, {ROWS_PER_TRANSACTION:,} rows a transaction, "
            "synchronous=FULL",
        ),
    ]
    _progress(f"done in {time.perf_counter() - began:.1f} s")
    return results


def run(root: Path) -> list[Result]:
    return asyncio.run(_run(root))
