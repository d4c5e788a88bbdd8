"""Whether, and under which key, a store's record bodies are sealed: checked at each open.

A store records how its bodies are kept (meta `sealing`): "plain", or a check value
sealed under its key. Opened with a key that does not open the check value, or with no
key while it holds sealed records, it refuses to open (`StoreKeyError`): otherwise every
old record would fail to open, be left out of its batch as damage, and be deleted by the
hub's acknowledgement of the batch that covers it. A store holding no records takes the
key it is given (a new device; a drained store whose key was replaced): nothing is lost.

Turning encryption on seals the plain records kept; turning it off opens them, under the
key they were sealed with (`former`), and keeps them plain. Both in one transaction, at
open, before anything reads or numbers a record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag

from edge.store.cipher import RecordCipher
from edge.store.errors import StoreKeyError
from outpost.sqlite import Database

logger = logging.getLogger(__name__)

KEY = "sealing"
PLAIN = "plain"
_CHECK = b"outpost store key check"
_CHECK_STREAM = "meta"  # bound into the check value: no record body can pass for it
_PROBE = 20  # records looked at to tell how a store from before `sealing` keeps them
_Change = Callable[[str, int, bytes], bytes]  # a body, as (stream, seq, body) becomes

_RESTORE = (
    "restore the store.key that sealed them (from the backup the store came from), or, to "
    "start afresh without them, stop the agent and move {path} (with any -wal and -shm "
    "beside it) out of the data folder"
)


def settle(
    db: Database, path: Path, cipher: RecordCipher | None, former: RecordCipher | None
) -> None:
    """Check that `cipher` (None: plain) opens the store's records, sealing or opening
    them if encryption was switched on or off; raise `StoreKeyError` if it cannot."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT value FROM meta WHERE key = ?", (KEY,)).fetchone()
        recorded: str | None = row[0] if row is not None else None
        held = _count(db)
        kept = _kept_as(db, recorded, cipher, former) if held else None
        if cipher is not None:
            if kept == PLAIN:
                _rewrite(db, lambda stream, seq, body: cipher.seal(stream, seq, body))
                logger.warning("encryption at rest switched on: sealed the %d records kept", held)
            elif kept in ("former", "other"):
                raise StoreKeyError(
                    f"{path} holds {held} records sealed under another key than store.key: "
                    + _RESTORE.format(path=path)
                )
            if recorded is not None and recorded != PLAIN and _opens_check(cipher, recorded):
                value = recorded  # the same key: its check value stays
            else:
                value = _check_value(cipher)
        else:
            if kept in ("former", "other"):
                if kept == "other" or former is None:
                    raise StoreKeyError(
                        f"{path} holds {held} sealed records, but runtime.encrypt_store is off "
                        "and store.key does not open them: turn encrypt_store back on, or "
                        + _RESTORE.format(path=path)
                    )
                _rewrite(db, lambda stream, seq, body: former.open(stream, seq, body))
                logger.warning("encryption at rest switched off: opened the %d records kept", held)
            value = PLAIN
        if value != recorded:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (KEY, value),
            )


def _kept_as(
    db: Database, recorded: str | None, cipher: RecordCipher | None, former: RecordCipher | None
) -> str:
    """How the records held are kept: "plain", "cipher" (sealed under `cipher`), "former"
    (sealed under `former`, not `cipher`) or "other" (sealed under a key not given)."""
    if recorded == PLAIN:
        return PLAIN
    if recorded is not None:
        for name, key in (("cipher", cipher), ("former", former)):
            if key is not None and _opens_check(key, recorded):
                return name
        return "other"
    # A store from before `sealing` was recorded: its records tell.
    rows = db.execute(
        "SELECT stream, seq, body FROM records ORDER BY stream, seq LIMIT ?", (_PROBE,)
    ).fetchall()
    for name, key in (("cipher", cipher), ("former", former)):
        if key is not None and any(_opens(key, r[0], r[1], r[2]) for r in rows):
            return name
    return PLAIN if any(_is_plain(r[2]) for r in rows) else "other"


def _rewrite(db: Database, change: _Change) -> None:
    """Replace every record's body with `change` of it; a body that does not open is
    damage, deleted and logged (it could never be sent)."""
    rows = db.execute("SELECT stream, seq, body FROM records").fetchall()
    for stream, seq, body in rows:
        try:
            new = change(stream, seq, body)
        except (InvalidTag, ValueError):
            logger.error("%s record %d is damaged (it does not decrypt): deleted", stream, seq)
            db.execute("DELETE FROM records WHERE stream = ? AND seq = ?", (stream, seq))
            continue
        db.execute("UPDATE records SET body = ? WHERE stream = ? AND seq = ?", (new, stream, seq))
    db.execute(
        "UPDATE streams SET "
        "records = (SELECT COUNT(*) FROM records r WHERE r.stream = streams.stream), "
        "bytes = (SELECT COALESCE(SUM(length(body)), 0) FROM records r "
        "WHERE r.stream = streams.stream)"
    )


def _count(db: Database) -> int:
    (n,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
    return int(n)


def _check_value(cipher: RecordCipher) -> str:
    return cipher.seal(_CHECK_STREAM, 0, _CHECK).hex()


def _opens_check(cipher: RecordCipher, value: str) -> bool:
    try:
        return _opens(cipher, _CHECK_STREAM, 0, bytes.fromhex(value))
    except ValueError:  # not hex: not a value this module wrote
        return False


def _opens(cipher: RecordCipher, stream: str, seq: int, sealed: bytes) -> bool:
    try:
        cipher.open(stream, seq, sealed)
    except (InvalidTag, ValueError):
        return False
    return True


def _is_plain(body: bytes) -> bool:
    try:
        msgspec.msgpack.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True
